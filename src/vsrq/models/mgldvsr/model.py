"""The MGLD-VSR networks assembled as the official checkpoints store them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vsrq.models.mgldvsr.config import MGLDVSRConfig, resolve_config
from vsrq.models.mgldvsr.structcond import StructCondEncoder
from vsrq.models.mgldvsr.unet import MGLDUNet
from vsrq.models.mgldvsr.vae import VideoVAE


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model``: the Lightning module's ``model`` attribute, hence the key prefix."""

    def __init__(self, unet: MGLDUNet) -> None:
        super().__init__()
        self.diffusion_model = unet


class MGLDVSRDenoiser(nn.Module):
    """The two networks of ``mgldvsr_unet.ckpt``: the UNet (``model.diffusion_model.*``) and the
    struct-cond encoder (``structcond_stage_model.*``); one call predicts the noise of a latent clip."""

    def __init__(self, config: MGLDVSRConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DiffusionWrapper(MGLDUNet(config.unet))
        self.structcond_stage_model = StructCondEncoder(config.structcond)

    @property
    def unet(self) -> MGLDUNet:
        return self.model.diffusion_model

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, lq_latent: torch.Tensor,
                struct_timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: noisy latents ``(B*T, 4, h, w)``; ``lq_latent``: the LQ clip's latents, same shape.

        The struct-cond encoder reads its own timesteps where a sampler fixes them apart from the
        denoising step (MGLD-VSR's ``time_replace``); by default the same ones.
        """
        struct = self.structcond_stage_model(lq_latent, timesteps if struct_timesteps is None else struct_timesteps)
        return self.unet(x, timesteps, context, struct)


class MGLDVSR(nn.Module):
    """Denoiser and video VAE. Their official state dicts live in two files, see :data:`CHECKPOINT_PARTS`."""

    def __init__(self, denoiser: MGLDVSRDenoiser, vae: VideoVAE) -> None:
        super().__init__()
        self.config = denoiser.config
        self.denoiser = denoiser
        self.vae = vae


UNET_CHECKPOINT = "mgldvsr_unet.ckpt"
VAE_CHECKPOINT = "video_vae_cfw.ckpt"
CHECKPOINT_PARTS: dict[str, str] = {UNET_CHECKPOINT: "denoiser", VAE_CHECKPOINT: "vae"}  # file -> MGLDVSR attribute


def build_mgldvsr(config: MGLDVSRConfig | str | dict[str, Any] = "full") -> MGLDVSR:
    """Build from a config, a preset name (``full``, ``tiny``) or a config dict.

    Build under ``with torch.device("meta"):`` to count or list the full-size model without memory.
    """
    cfg = resolve_config(config)
    return MGLDVSR(MGLDVSRDenoiser(cfg), VideoVAE(cfg.vae))
