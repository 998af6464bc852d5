"""Building blocks shared by MGLD-VSR's denoiser, struct-cond encoder and video VAE.

Attribute names follow the Stable Diffusion ``ldm`` code that MGLD-VSR extends, so state-dict keys
match the official checkpoints (``in_layers.2.weight``, ``ff.net.0.proj.weight``, ...). Frames
travel in the batch dimension, ``(batch * frames, C, H, W)``, as in the official code; the temporal
layers regroup them by ``num_frames``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.attention import DotProductAttention
from vsrq.models.mgldvsr.config import NORM_GROUPS

StructFeatures = dict[int, torch.Tensor]  # struct-cond features keyed by their width in latent pixels


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=eps)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first then sines (the ldm order the trained weights expect)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def split_frames(x: torch.Tensor, num_frames: int) -> int:
    """Clips in a ``(clips * frames, ...)`` batch; a batch that is not whole clips is a caller error."""
    if x.shape[0] % num_frames:
        raise VsrqError(f"batch of {x.shape[0]} images is not a whole number of {num_frames}-frame clips")
    return x.shape[0] // num_frames


class Attention(nn.Module):
    """Multi-head attention over tokens ``(B, N, C)``: self-attention, or cross-attention on ``context``."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))  # official key: to_out.0 (a dropout followed)
        self.attend = DotProductAttention()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        if context.shape[0] != x.shape[0]:  # one prompt for every frame of the batch
            context = context.repeat_interleave(x.shape[0] // context.shape[0], dim=0)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        return self.to_out(self.attend(q, k, v).transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """Linear to twice the width, then value * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # index 1 is the official dropout (p=0); an Identity keeps the output layer at net.2
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text context, gated feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """SD 2.x transformer over the pixels of each frame, with linear in/out projections."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, context_dim)])
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)  # starts as identity, as the ldm code initializes it
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).transpose(1, 2).unflatten(2, (h, w))


class TemporalMix(nn.Module):
    """A (3, 1, 1) Conv3d over each pixel's neighbouring frames, blended with the input by a learned alpha.

    Official ``SpatialTemporalConv``. Alpha starts at 0 so that a pretrained image network is unchanged
    until the temporal weights are trained.
    """

    def __init__(self, channels: int, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.temporal_conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.temporal_alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = split_frames(x, self.num_frames)
        video = x.unflatten(0, (clips, self.num_frames)).transpose(1, 2)  # (B, C, T, H, W)
        mixed = self.temporal_conv(video).transpose(1, 2).flatten(0, 1)
        return self.temporal_alpha * mixed + (1 - self.temporal_alpha) * x


class SPADE(nn.Module):
    """Normalize, then scale and shift per pixel by maps predicted from the struct-cond features."""

    def __init__(self, channels: int, struct_channels: int, hidden: int) -> None:
        super().__init__()
        self.param_free_norm = group_norm(channels)  # the name is official; this GroupNorm is affine
        self.mlp_shared = nn.Sequential(nn.Conv2d(struct_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, struct: StructFeatures) -> torch.Tensor:
        act = self.mlp_shared(struct[x.shape[-1]])
        return self.param_free_norm(x) * (1 + self.mlp_gamma(act)) + self.mlp_beta(act)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the timestep embedding, GroupNorm-SiLU-conv, then SPADE (when given
    ``struct_channels``: the denoiser's official ``ResBlockDual``), plus a skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int,
                 struct_channels: int | None = None, spade_hidden: int = 128) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.spade = None if struct_channels is None else SPADE(out_channels, struct_channels, spade_hidden)
        # index 2 is the official dropout (p=0); an Identity keeps the conv at out_layers.3
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)  # the block starts as its skip path, as in ldm
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, struct: StructFeatures | None = None) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        h = self.out_layers(h)
        if self.spade is not None:
            h = self.spade(h, struct)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (the UNet's and the VAE decoder's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionedSequential(nn.Sequential):
    """A UNet stage: hands each layer the conditioning it takes (official ``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                struct: StructFeatures | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, struct)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def time_mlp(channels: int) -> nn.Sequential:
    """Sinusoidal timestep features (``channels`` wide) -> the 4x wider embedding every ResBlock reads."""
    return nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, 4 * channels))
