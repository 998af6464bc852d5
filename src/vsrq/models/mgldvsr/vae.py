"""MGLD-VSR's video VAE: SD's KL encoder and a temporal decoder fused with the LQ frames' features (CFW).

Official ``VideoAutoencoderKLResi`` with ``VideoDecoder_Mix`` (checkpoint ``video_vae_cfw.ckpt``,
keys ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``). The decoder mixes
frames with (3, 1, 1) temporal convs, and at its inner levels adds a CFW (controllable feature
wrapping, from StableSR) correction computed from the encoder's features of the low-quality
input, weighted by ``fusion_weight``: fidelity to the input against generated detail.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.models.attention import DotProductAttention
from vsrq.models.mgldvsr.config import VideoVAEConfig
from vsrq.models.mgldvsr.layers import TemporalMix, Upsample, group_norm


def _norm(channels: int) -> nn.GroupNorm:
    return group_norm(channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice plus a skip (a 1x1 conv when the width changes); no timestep.

    The skip's attribute name differs between the official VAE (``nin_shortcut``) and CFW
    (``conv_out``); ``skip_name`` keeps each checkpoint's keys.
    """

    skip_name = "nin_shortcut"

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        setattr(self, self.skip_name, nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        skip = getattr(self, self.skip_name)
        return h + (x if skip is None else skip(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a frame, 1x1 conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.attend = DotProductAttention()
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))
        out = self.attend(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom only (the KL autoencoder's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Middle(nn.Module):
    """res block, attention, res block (called piecewise: the decoder mixes frames after ``block_1``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)


class EncoderLevel(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], downsample: Downsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample


class DecoderLevel(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], mixing: list[TemporalMix], upsample: Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.temporal_mixing = nn.ModuleList(mixing)
        self.upsample = upsample


def fusion_levels(config: VideoVAEConfig) -> range:
    """Levels whose encoder features feed a CFW layer: all but the first (full resolution) and the last."""
    return range(1, len(config.channel_mult) - 1)


class Encoder(nn.Module):
    """Frames ``(N, 3, H, W)`` in [-1, 1] -> moments ``(N, 2 * z_channels, H/f, W/f)`` and the CFW features."""

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.base_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult))
                width = ch * mult
            self.down.append(EncoderLevel(blocks, Downsample(width) if level != last else None))
        self.mid = Middle(width)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.conv_in(x)
        features = []
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if level in fusion_levels(self.config):
                features.append(h)
            if stage.downsample is not None:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h))), features


class ResBlock(ResnetBlock):
    """CFW's res block: the VAE's, with its 1x1 skip named ``conv_out``."""

    skip_name = "conv_out"


class ResidualDenseBlock(nn.Module):
    """ESRGAN's dense block: five 3x3 convs, each reading all earlier outputs; output scaled by 0.2."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, dim=1)), 0.2))
        return x + 0.2 * self.conv5(torch.cat(feats, dim=1))


class CFWFusion(nn.Module):
    """Decoder features plus ``w`` times a correction computed from [encoder features, decoder features]."""

    def __init__(self, channels: int, blocks: int, growth: int) -> None:
        super().__init__()
        self.encode_enc_1 = ResBlock(2 * channels, channels)
        self.encode_enc_2 = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(blocks)))
        self.encode_enc_3 = ResBlock(channels, channels)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, weight: float) -> torch.Tensor:
        correction = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([enc, dec], dim=1))))
        return dec + weight * correction


class VideoDecoder(nn.Module):
    """Latents ``(B*T, z_channels, h, w)`` and the LQ frames' encoder features -> frames ``(B*T, 3, fh, fw)``."""

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        self.config = config
        ch, frames = config.base_channels, config.num_frames
        width = ch * config.channel_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = Middle(width)
        self.temporal_mixing = TemporalMix(width, frames)
        levels: list[DecoderLevel] = []
        for level in reversed(range(len(config.channel_mult))):
            blocks, mixing = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * config.channel_mult[level]))
                width = ch * config.channel_mult[level]
                mixing.append(TemporalMix(width, frames))
            levels.insert(0, DecoderLevel(blocks, mixing, Upsample(width) if level else None))
        self.up = nn.ModuleList(levels)
        for level in fusion_levels(config):
            self.add_module(f"fusion_layer_{level}", CFWFusion(ch * config.channel_mult[level],
                                                               config.fusion_blocks, config.fusion_growth))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, features: list[torch.Tensor], fusion_weight: float) -> torch.Tensor:
        h = self.mid.block_1(self.conv_in(z))
        h = self.mid.block_2(self.mid.attn_1(self.temporal_mixing(h)))
        enc = dict(zip(fusion_levels(self.config), features))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block, mix in zip(stage.block, stage.temporal_mixing):
                h = mix(block(h))
            if level in enc:
                h = self.get_submodule(f"fusion_layer_{level}")(enc[level], h, fusion_weight)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEEncoding(NamedTuple):
    mean: torch.Tensor  # (N, embed_dim, h, w): the posterior mode
    logvar: torch.Tensor
    features: list[torch.Tensor]  # encoder features for the decoder's CFW layers, finest first


class VideoVAE(nn.Module):
    """``encode`` LQ frames to latents and CFW features; ``decode`` (denoised) latents back to frames.

    Latents here are unscaled: multiply by SD's 0.18215 before diffusion, divide after.
    """

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = VideoDecoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, frames: torch.Tensor) -> VAEEncoding:
        moments, features = self.encoder(frames)
        mean, logvar = self.quant_conv(moments).chunk(2, dim=1)
        return VAEEncoding(mean, logvar.clamp(-30.0, 20.0), features)

    def decode(self, z: torch.Tensor, features: list[torch.Tensor], fusion_weight: float | None = None) -> torch.Tensor:
        weight = self.config.fusion_weight if fusion_weight is None else fusion_weight
        return self.decoder(self.post_quant_conv(z), features, weight)
