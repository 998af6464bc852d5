"""MGLD-VSR's denoiser: the Stable Diffusion 2.1 UNet with SPADE-conditioned res blocks and a temporal middle.

Official ``InflatedUNetModelDualcondV2``. Every res block is followed by SPADE on the struct-cond
features of its resolution (the LQ latent's structure, as in StableSR); the middle block adds two
temporal convs and a temporal attention over the frames of each pixel, the only places where
frames meet. Stored under ``model.diffusion_model.`` in the Lightning checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrq.models.mgldvsr.config import UNetConfig
from vsrq.models.mgldvsr.layers import (
    Attention,
    ConditionedSequential,
    Downsample,
    ResBlock,
    SpatialTransformer,
    StructFeatures,
    TemporalMix,
    Upsample,
    group_norm,
    split_frames,
    time_mlp,
    timestep_embedding,
)


class TemporalAttention(nn.Module):
    """Self-attention across the frames of each pixel, blended with the input by a learned alpha (starts at 0)."""

    def __init__(self, channels: int, heads: int, head_dim: int, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.temporal_attn = Attention(channels, heads, head_dim)
        self.norm = nn.LayerNorm(channels)
        self.temporal_alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = split_frames(x, self.num_frames)
        _, c, h, w = x.shape
        # (B*T, C, H, W) -> (B*H*W, T, C): one sequence of T tokens per pixel
        seq = x.unflatten(0, (clips, self.num_frames)).permute(0, 3, 4, 1, 2).reshape(-1, self.num_frames, c)
        out = self.temporal_attn(self.norm(seq))
        out = out.reshape(clips, h, w, self.num_frames, c).permute(0, 3, 4, 1, 2).flatten(0, 1)
        return self.temporal_alpha * out + (1 - self.temporal_alpha) * x


class MGLDUNet(nn.Module):
    """Noisy latents ``(B*T, C, h, w)``, timesteps ``(B*T,)``, text context ``(B*T or 1, 77, context_dim)``
    and struct-cond features -> predicted noise ``(B*T, out_channels, h, w)``. h and w must be multiples
    of 2^(levels - 1)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.model_channels
        emb = 4 * ch

        def heads_of(width: int) -> int:  # SD 2.x fixes the head width, not the head count
            return width // config.head_channels

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb, cout, config.struct_channels, config.spade_hidden)

        def transformer(width: int) -> SpatialTransformer:
            return SpatialTransformer(width, heads_of(width), config.head_channels, config.context_dim)

        self.time_embed = time_mlp(ch)
        self.input_blocks = nn.ModuleList([ConditionedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skips = [ch]
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * config.model_channels)]
                ch = mult * config.model_channels
                if level in config.attention_levels:
                    layers.append(transformer(ch))
                self.input_blocks.append(ConditionedSequential(*layers))
                skips.append(ch)
            if level != last:
                self.input_blocks.append(ConditionedSequential(Downsample(ch)))
                skips.append(ch)

        self.middle_block = ConditionedSequential(
            res(ch, ch),
            TemporalMix(ch, config.num_frames),
            transformer(ch),
            TemporalAttention(ch, heads_of(ch), config.head_channels, config.num_frames),
            res(ch, ch),
            TemporalMix(ch, config.num_frames),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * config.model_channels)]
                ch = mult * config.model_channels
                if level in config.attention_levels:
                    layers.append(transformer(ch))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(ConditionedSequential(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)  # ldm starts the denoiser at a zero prediction
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                struct: StructFeatures) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context, struct)
            hs.append(h)
        h = self.middle_block(h, emb, context, struct)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, struct)
        return self.out(h)
