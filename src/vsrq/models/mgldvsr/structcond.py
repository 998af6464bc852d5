"""The struct-cond encoder: the LQ latent and the timestep -> one feature map per UNet resolution for SPADE.

Official ``InflatedEncoderUNetModelWT`` (StableSR's time-aware encoder; frames are independent
here). Half a UNet: it keeps the input of each downsample and the middle block's output, and maps
each through a res block to ``out_channels``. Stored under ``structcond_stage_model.``.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrq.models.attention import DotProductAttention
from vsrq.models.mgldvsr.config import StructCondConfig
from vsrq.models.mgldvsr.layers import (
    ConditionedSequential,
    Downsample,
    ResBlock,
    StructFeatures,
    group_norm,
    time_mlp,
    timestep_embedding,
)


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a frame with 1-D conv projections (the guided-diffusion block).

    The fused ``qkv`` output is laid out head by head, each head's q, k, v consecutive (the
    legacy order the official weights use).
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attend = DotProductAttention()
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)
        qkv = self.qkv(self.norm(flat)).view(b, self.heads, 3 * c // self.heads, h * w)
        q, k, v = (t.transpose(2, 3) for t in qkv.chunk(3, dim=2))  # each (B, heads, HW, head_dim)
        out = self.attend(q, k, v).transpose(2, 3).reshape(b, c, h * w)
        return (flat + self.proj_out(out)).view(b, c, h, w)


class StructCondEncoder(nn.Module):
    """LQ latent ``(B*T, C, h, w)`` and timesteps ``(B*T,)`` -> ``{width: (B*T, out_channels, width', width)}``
    at h, h/2, ... h/2^(levels-1)."""

    def __init__(self, config: StructCondConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.model_channels
        emb = 4 * ch
        self.time_embed = time_mlp(ch)
        self.input_blocks = nn.ModuleList([ConditionedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        tapped = []  # widths of the maps handed to fea_tran: each downsample's input, then the middle's output
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * config.model_channels)]
                ch = mult * config.model_channels
                if level in config.attention_levels:
                    layers.append(AttentionBlock(ch, config.num_heads))
                self.input_blocks.append(ConditionedSequential(*layers))
            if level != last:
                self.input_blocks.append(ConditionedSequential(Downsample(ch)))
                tapped.append(ch)
        self.middle_block = ConditionedSequential(
            ResBlock(ch, emb, ch), AttentionBlock(ch, config.num_heads), ResBlock(ch, emb, ch)
        )
        tapped.append(ch)
        self.fea_tran = nn.ModuleList([ResBlock(c, emb, config.out_channels) for c in tapped])

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> StructFeatures:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        taps = []
        h = x
        for block in self.input_blocks:
            out = block(h, emb)
            if out.shape[-1] != h.shape[-1]:
                taps.append(h)
            h = out
        taps.append(self.middle_block(h, emb))
        return {tap.shape[-1]: tran(tap, emb) for tap, tran in zip(taps, self.fea_tran)}
