"""``mgldvsr-small``: a pixel-space member of the MGLD-VSR family, small enough to train on one CPU core.

It reuses the full model's classes (SPADE-conditioned UNet with the temporal middle block, and
the struct-cond encoder) at widths 32/64/128. Instead of a VAE latent it diffuses the HR residual
over the bicubic upsampling, scaled by ``residual_scale`` and folded 4x4 into channels (so the
UNet runs on the LR pixel grid); the struct-cond encoder reads the folded bicubic frames,
as the full model's reads the LQ latent. The bicubic image is the residual's zero, so sampling
starts from ``q_sample(0, start_t)`` exactly as MGLD-VSR starts from ``q_sample(LQ latent, 999)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from vsrq.data.degrade import degrade, modcrop
from vsrq.data.frames import list_frames, read_frame
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8
from vsrq.models.mgldvsr.config import MGLDVSRConfig, StructCondConfig, UNetConfig, VideoVAEConfig
from vsrq.models.mgldvsr.model import MGLDVSRDenoiser
from vsrq.models.mgldvsr.sampler import FlowEstimator, SamplerConfig, TemporalGuide, adain_color_fix, sample_chunk
from vsrq.models.weights import load_state_dict_strict, write_safetensors

SCALE = 4
WEIGHTS_FILE = "mgldvsr_small.safetensors"
ST_WEIGHTS_FILE = "mgldvsr_st.safetensors"  # the member with spatial transformers


def _small_denoiser(fold: int, num_frames: int, channel_mult: tuple[int, ...],
                    attention_levels: tuple[int, ...]) -> MGLDVSRConfig:
    channels = 3 * fold * fold
    return MGLDVSRConfig(
        unet=UNetConfig(in_channels=channels, out_channels=channels, model_channels=32, channel_mult=channel_mult,
                        num_res_blocks=1, attention_levels=attention_levels, head_channels=32, context_dim=32,
                        struct_channels=32, spade_hidden=32, num_frames=num_frames),
        structcond=StructCondConfig(in_channels=channels, model_channels=32, out_channels=32, channel_mult=(1, 1, 2),
                                    num_res_blocks=1, attention_levels=(), num_heads=1),
        vae=VideoVAEConfig(num_frames=num_frames),  # unused: this member has no VAE
    )


@dataclass(frozen=True)
class SmallConfig:
    """Widths of the member, how pixels map to its diffusion space, and how it samples.

    ``attention_levels`` puts spatial transformers (self- and cross-attention, GEGLU feed-forward) into
    the input and output blocks of those UNet levels, as the full model has them at three of its four;
    ``context_tokens`` > 0 makes the cross-attention context a learned ``(1, tokens, 32)`` tensor, the
    counterpart of the full model's fixed empty-prompt embedding (0: a zero context, as ``mgldvsr-small``).
    """

    fold: int = 4
    num_frames: int = 5
    residual_scale: float = 10.0
    channel_mult: tuple[int, ...] = (1, 2, 4)
    attention_levels: tuple[int, ...] = ()
    context_tokens: int = 0
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(
        steps=2, start_t=999, eta=0.0, prediction="v", guidance_scale=0.0, tile=64, tile_overlap=16,
        color_fix=False))

    def __post_init__(self) -> None:
        if self.fold < 1 or self.num_frames < 1 or self.residual_scale <= 0 or self.context_tokens < 0:
            raise VsrqError(f"small MGLD-VSR: bad fold/num_frames/residual_scale/context_tokens in {self}")
        self.denoiser  # the UNet config checks widths and attention levels

    @property
    def denoiser(self) -> MGLDVSRConfig:
        return _small_denoiser(self.fold, self.num_frames, self.channel_mult, self.attention_levels)

    @property
    def multiple(self) -> int:
        """HR sides must be multiples of this: the fold times the UNet's total downsampling."""
        return self.fold * 2 ** (len(self.denoiser.unet.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SmallConfig":
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}  # JSON lists back to tuples
        return cls(**{**d, **tuples, "sampler": SamplerConfig(**d.get("sampler", {}))})


def bicubic_up(lr: torch.Tensor) -> torch.Tensor:
    """The x4 bicubic upsampling the member conditions on and adds its residual to, in [0, 1]."""
    return F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1)


class SmallMGLDVSR(nn.Module):
    """LR frames ``(T, 3, h, w)`` in [0, 1] -> HR frames ``(T, 3, 4h, 4w)``, ``T`` = ``config.num_frames``."""

    def __init__(self, config: SmallConfig = SmallConfig()) -> None:
        super().__init__()
        self.config = config
        self.denoiser = MGLDVSRDenoiser(config.denoiser)
        # no text: a fixed context, the counterpart of the full model's empty-prompt embedding
        dim = config.denoiser.unet.context_dim
        if config.context_tokens:
            self.context = nn.Parameter(torch.randn(1, config.context_tokens, dim) * dim**-0.5)
        else:
            self.register_buffer("context", torch.zeros(1, 1, dim), persistent=False)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.config.fold)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.config.fold)

    def condition(self, up: torch.Tensor) -> torch.Tensor:
        """Bicubic frames in [0, 1] -> the struct-cond input (folded, in [-1, 1])."""
        return self.fold(up * 2 - 1)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (v or eps, see ``config.sampler.prediction``) for folded noisy residuals."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return self.denoiser(x, t, self.context, cond)

    def upscale(self, lr: torch.Tensor, seed: int = 0, flow: FlowEstimator | None = None,
                sampler: SamplerConfig | None = None) -> torch.Tensor:
        """Sample one chunk of ``num_frames`` frames; deterministic for a seed."""
        cfg = sampler or self.config.sampler
        h, w = lr.shape[-2:]
        m = math.lcm(self.config.multiple, SCALE) // SCALE  # LR sides padded so that HR sides fit the UNet
        ph, pw = -h % m, -w % m
        padded = F.pad(lr, (0, pw, 0, ph), mode="replicate") if ph or pw else lr
        up = bicubic_up(padded)
        cond = self.condition(up)
        guide = None
        if flow is not None and cfg.guidance_scale > 0:
            guide = TemporalGuide.from_frames(padded, flow, cond.shape[-2:], cfg)
        residual = sample_chunk(self.predict, cond, torch.zeros_like(cond), cfg, seed, guide)
        hr = up + self.unfold(residual) / self.config.residual_scale
        if cfg.color_fix:
            hr = adain_color_fix(hr, up)
        return hr.clamp(0, 1)[..., : SCALE * h, : SCALE * w]


def save_small(model: SmallMGLDVSR, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Weights as safetensors with the config (and training facts) as JSON metadata."""
    path = Path(path)
    metadata = {"config": json.dumps(model.config.to_dict())}
    if meta:
        metadata["training"] = json.dumps(meta)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return write_safetensors(state, path, metadata)


def load_small(path: str | Path) -> SmallMGLDVSR:
    """A member saved by :func:`save_small`; the architecture comes from the file's own metadata."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own and OS errors for a foreign file
        raise VsrqError(f"{path}: not a safetensors file ({type(exc).__name__})") from None
    if "config" not in metadata:
        raise VsrqError(f"{path}: no 'config' metadata; not a small MGLD-VSR file")
    try:
        config = SmallConfig.from_dict(json.loads(metadata["config"]))
    except (TypeError, ValueError) as exc:
        raise VsrqError(f"{path}: its config metadata does not describe a small MGLD-VSR ({exc})") from None
    model = SmallMGLDVSR(config)
    load_state_dict_strict(model, state, str(path))
    return model.eval()


def crop_pair(frames: np.ndarray, y: int, x: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(GT uint8 ``(T, size, size, 3)``, BI x4 LR) cut at HR ``(y, x)`` (multiples of 4) from whole frames.

    LR is made from the whole frame (MATLAB-style bicubic) and cut at the matching LR position, so the
    crop border sees the same LR pixels as whole-frame inference.
    """
    gts = frames[:, y : y + size, x : x + size]
    lrs = [degrade(f, "bi")[y // SCALE : (y + size) // SCALE, x // SCALE : (x + size) // SCALE] for f in frames]
    return np.ascontiguousarray(gts), np.stack(lrs)


def vid4_crops(gt_root: str | Path, clips: tuple[str, ...] = ("calendar", "city", "foliage", "walk"),
               frames: int = 5, size: int = 192) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centre crops of the first ``frames`` frames of each clip under ``gt_root`` (Vid4's ``GT`` folder):
    (GT uint8 ``(T, size, size, 3)``, BI x4 LR)."""
    out = {}
    for name in clips:
        video = np.stack([modcrop(read_frame(p), SCALE) for p in list_frames(Path(gt_root) / name)[:frames]])
        y = (video.shape[1] // 2 - size // 2) // SCALE * SCALE
        x = (video.shape[2] // 2 - size // 2) // SCALE * SCALE
        out[name] = crop_pair(video, y, x, size)
    return out


def score_crops(model: SmallMGLDVSR, crops: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0,
                sampler: SamplerConfig | None = None,
                flow: FlowEstimator | None = None) -> dict[str, dict[str, float]]:
    """Y-PSNR of the member and of its bicubic input against GT, per clip (mean over frames);
    ``flow`` is used only by a sampler with guidance on."""
    scores = {}
    for name, (gt, lr) in crops.items():
        x = torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)
        with torch.no_grad():
            hr = tensor_to_uint8(model.upscale(x, seed, flow, sampler=sampler))
            bic = tensor_to_uint8(bicubic_up(x))
        scores[name] = {"model": float(np.mean([psnr(p, g, y=True) for p, g in zip(hr, gt)])),
                        "bicubic": float(np.mean([psnr(p, g, y=True) for p, g in zip(bic, gt)]))}
    return scores


def leave_one_clip_out(gains: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Leave-one-clip-out selection over a table ``gains[candidate][clip]`` (e.g. dB over bicubic).

    For each held-out clip: the candidate with the best mean gain on the other clips (the first
    listed wins a tie), that mean, and the pick's gain on the held-out clip. The mean of the
    held-out gains estimates what choosing by such a table delivers on clips the choice did not see.
    """
    names = list(gains)
    clips = list(gains[names[0]]) if names else []
    if len(clips) < 2 or any(set(gains[n]) != set(clips) for n in names):
        raise VsrqError("leave-one-clip-out needs every candidate scored on the same two or more clips")
    folds = {}
    for held in clips:
        rest = [c for c in clips if c != held]
        means = {n: float(np.mean([gains[n][c] for c in rest])) for n in names}
        pick = max(names, key=lambda n: means[n])  # max keeps the first of equals
        folds[held] = {"pick": pick, "selection_gain": means[pick], "held_out_gain": float(gains[pick][held])}
    return folds
