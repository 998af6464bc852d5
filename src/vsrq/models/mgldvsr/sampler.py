"""MGLD-VSR's sampler: respaced DDPM from a noised LQ latent, with flow-guided temporal consistency.

Facts from the paper and the official inference script: Stable Diffusion's "linear" schedule
(betas linear in sqrt space from 0.00085 to 0.0120 over 1000 steps) with eps-prediction, respaced
to 50 steps as guided diffusion does; sampling starts at ``q_sample(LQ latent, 999)``; after each
step the latents of neighbouring frames are pulled together along optical flow by one gradient step
of a masked L1 loss, its step size ``guidance_scale * |log posterior variance|`` (scale 10); pixels
failing the forward-backward consistency check (UnFlow's alpha 0.01, beta 0.5) are left out;
large latents are denoised in 64x64 tiles blended with Gaussian weights (variance 0.01 of the tile
size); videos run in 5-frame chunks; the decoded frames get AdaIN colour correction from the LQ.

``eta`` generalizes the step: 1 is the respaced DDPM (ancestral) step, 0 the deterministic DDIM
step a small regression-like member samples best with. Every random draw comes from one
``torch.Generator`` seeded per chunk, so a chunk's output depends only on its frames and the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vsrq.errors import VsrqError
from vsrq.models.spynet import flow_warp

SD_LINEAR_START = 0.00085
SD_LINEAR_END = 0.0120
TRAIN_TIMESTEPS = 1000
TILE_VARIANCE = 0.01  # the official Gaussian tile weights' variance, relative to the tile size squared
COLOR_EPS = 1e-5

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, cond) -> eps or v
FlowEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ref, supp) -> flow warping supp onto ref


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Defaults are MGLD-VSR's published inference settings."""

    steps: int = 50
    start_t: int = TRAIN_TIMESTEPS - 1
    eta: float = 1.0
    prediction: str = "eps"
    guidance_scale: float = 10.0
    occlusion_alpha: float = 0.01
    occlusion_beta: float = 0.5
    tile: int = 64
    tile_overlap: int = 32
    color_fix: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.start_t < TRAIN_TIMESTEPS:
            raise VsrqError(f"sampler: start_t must be in 0..{TRAIN_TIMESTEPS - 1}, got {self.start_t}")
        if not 1 <= self.steps <= self.start_t + 1:
            raise VsrqError(f"sampler: steps must be in 1..{self.start_t + 1} for start_t={self.start_t}")
        if self.prediction not in ("eps", "v"):
            raise VsrqError(f"sampler: prediction must be 'eps' or 'v', got {self.prediction!r}")
        if not 0 <= self.tile_overlap < self.tile:
            raise VsrqError(f"sampler: need 0 <= tile_overlap < tile, got {self.tile_overlap} and {self.tile}")
        if self.eta < 0 or self.guidance_scale < 0:
            raise VsrqError(f"sampler: eta and guidance_scale must be >= 0, got {self.eta} and {self.guidance_scale}")


def sd_alphas_cumprod(num_timesteps: int = TRAIN_TIMESTEPS, start: float = SD_LINEAR_START,
                      end: float = SD_LINEAR_END) -> torch.Tensor:
    """Cumulative products of 1 - beta for SD's schedule (float64: the respacing divides neighbours)."""
    betas = torch.linspace(start**0.5, end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def respaced_timesteps(steps: int, last: int = TRAIN_TIMESTEPS - 1) -> torch.Tensor:
    """``steps`` timesteps evenly spread over 0..last, rounded (guided diffusion's ``space_timesteps``)."""
    if not 1 <= steps <= last + 1:
        raise VsrqError(f"cannot respace 0..{last} to {steps} steps")
    if steps == 1:
        return torch.tensor([last])
    stride = last / (steps - 1)
    return torch.tensor([round(i * stride) for i in range(steps)])


def respaced_betas(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Betas of the shortened chain that keeps ``alphas_cumprod`` at the kept timesteps."""
    kept = alphas_cumprod[timesteps]
    previous = torch.cat([kept.new_ones(1), kept[:-1]])
    return 1 - kept / previous


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[t].item()
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise


def split_prediction(out: torch.Tensor, x: torch.Tensor, a: float,
                     prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from the network output at a timestep with alpha-bar ``a``."""
    sa, s1a = math.sqrt(a), math.sqrt(1 - a)
    if prediction == "v":
        return sa * x - s1a * out, s1a * x + sa * out
    return (x - s1a * out) / sa, out


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering ``size``; the last tile is flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """Separable Gaussian over a tile, peaked at its centre, so overlapping tiles fade into each other."""

    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return torch.exp(-(((i - (n - 1) / 2) / n) ** 2) / (2 * TILE_VARIANCE))

    return axis(height)[:, None] * axis(width)[None, :]


def tiled(denoise: Denoiser, tile: int, overlap: int) -> Denoiser:
    """``denoise`` applied tile by tile over (x, cond) and blended with normalized Gaussian weights.

    A canvas no larger than one tile is passed through whole, so tiling never changes small inputs.
    """

    def run(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return denoise(x, t, cond)
        th, tw = min(tile, h), min(tile, w)
        weight = gaussian_weights(th, tw).to(x)
        out, norm = None, x.new_zeros(h, w)
        for y in tile_starts(h, tile, overlap):
            for x0 in tile_starts(w, tile, overlap):
                win = (..., slice(y, y + th), slice(x0, x0 + tw))
                pred = denoise(x[win], t, cond[win])
                if out is None:
                    out = x.new_zeros(*pred.shape[:-2], h, w)
                out[win] += pred * weight
                norm[y : y + th, x0 : x0 + tw] += weight
        return out / norm

    return run


def adain_color_fix(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Give each channel of each frame of ``x`` the mean and standard deviation of ``ref``'s (AdaIN)."""

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.flatten(-2)
        return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=False) + COLOR_EPS).sqrt()[..., None, None]

    mx, sx = stats(x)
    mr, sr = stats(ref)
    return (x - mx) / sx * sr + mr


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a flow field ``(N, 2, H, W)`` and rescale its vectors to the new pixel size."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    return out * out.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)


def occlusion_masks(fwd: torch.Tensor, bwd: torch.Tensor, alpha: float = 0.01,
                    beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-pixel masks (1 = consistent) of two opposite flows ``(N, 2, H, W)`` by forward-backward check.

    Following one flow and then the other must return to the start: where
    ``|f + warp(b, f)| > alpha * (|f| + |b|) + beta`` the pixel is occluded (UnFlow's rule).
    """
    mag = fwd.norm(dim=1) + bwd.norm(dim=1)
    back_f = flow_warp(bwd, fwd.permute(0, 2, 3, 1))
    back_b = flow_warp(fwd, bwd.permute(0, 2, 3, 1))
    threshold = alpha * mag + beta
    valid_f = ((fwd + back_f).norm(dim=1) <= threshold).float()
    valid_b = ((bwd + back_b).norm(dim=1) <= threshold).float()
    return valid_f[:, None], valid_b[:, None]


@dataclass(frozen=True)
class TemporalGuide:
    """Flows between neighbouring frames of a chunk at the sampler's resolution, and their valid masks.

    ``to_prev[i]`` warps frame i+1 onto frame i; ``to_next[i]`` warps frame i onto frame i+1.
    """

    to_prev: torch.Tensor
    to_next: torch.Tensor
    valid_prev: torch.Tensor
    valid_next: torch.Tensor

    @classmethod
    def from_frames(cls, frames: torch.Tensor, flow: FlowEstimator, size: tuple[int, int],
                    config: SamplerConfig) -> "TemporalGuide":
        """Estimate flows on the LQ frames ``(T, 3, H, W)`` in [0, 1] and scale them to ``size``."""
        if frames.shape[0] < 2:
            raise VsrqError("temporal guidance needs at least 2 frames")
        with torch.no_grad():
            to_prev = resize_flow(flow(frames[:-1], frames[1:]), size)
            to_next = resize_flow(flow(frames[1:], frames[:-1]), size)
        valid_prev, valid_next = occlusion_masks(to_prev, to_next, config.occlusion_alpha, config.occlusion_beta)
        return cls(to_prev, to_next, valid_prev, valid_next)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Masked L1 between each frame and its flow-warped neighbours, both directions."""
        from_next = flow_warp(x[1:], self.to_prev.permute(0, 2, 3, 1))
        from_prev = flow_warp(x[:-1], self.to_next.permute(0, 2, 3, 1))
        return (F.l1_loss(self.valid_prev * x[:-1], self.valid_prev * from_next)
                + F.l1_loss(self.valid_next * x[1:], self.valid_next * from_prev))

    def step(self, x: torch.Tensor, size: float) -> torch.Tensor:
        """One gradient step of :meth:`loss` on the latents (needs autograd, hence not inference mode)."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            grad = torch.autograd.grad(self.loss(leaf), leaf)[0]
        return (x - size * grad).detach()


def sample_chunk(denoise: Denoiser, cond: torch.Tensor, start: torch.Tensor, config: SamplerConfig, seed: int,
                 guide: TemporalGuide | None = None) -> torch.Tensor:
    """Sample one chunk: ``start`` (the LQ latent) noised to ``start_t``, then the respaced chain to t = 0.

    ``cond`` is what ``denoise`` reads beside the noisy input (tiled with it); returns predicted x0.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def randn() -> torch.Tensor:
        return torch.randn(start.shape, generator=generator, dtype=start.dtype).to(start.device)

    alphas = sd_alphas_cumprod()
    timesteps = respaced_timesteps(config.steps, config.start_t)
    kept = alphas[timesteps]
    step_fn = tiled(denoise, config.tile, config.tile_overlap)

    def predict(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(int(timesteps[i]), device=x.device)
        return split_prediction(step_fn(x, t, cond), x, kept[i].item(), config.prediction)

    x = q_sample(start, config.start_t, randn(), alphas)
    for i in range(len(timesteps) - 1, 0, -1):
        x0, eps = predict(x, i)
        a_t, a_s = kept[i].item(), kept[i - 1].item()
        variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)  # the respaced DDPM posterior variance
        sigma = config.eta * math.sqrt(variance)
        x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * randn()
        if guide is not None and config.guidance_scale > 0:
            x = guide.step(x, config.guidance_scale * abs(math.log(variance)))
    return predict(x, 0)[0]
