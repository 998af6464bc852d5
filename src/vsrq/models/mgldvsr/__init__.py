"""MGLD-VSR (Yang et al., ECCV 2024): motion-guided latent diffusion for real-world video super-resolution.

The architecture only, written from the paper and the official code's layer names and constants,
so that the official checkpoints load strictly: the SPADE-conditioned SD 2.1 UNet with its temporal
middle block, the struct-cond encoder, and the video VAE with CFW fusion. Sizes come from
:mod:`vsrq.models.mgldvsr.config` (``full`` as released, ``tiny`` for tests). The sampler is in
:mod:`~vsrq.models.mgldvsr.sampler`, the video pipelines in :mod:`~vsrq.models.mgldvsr.pipeline`, and
the small pixel-space member vsrq trains and ships (``mgldvsr-small``) in :mod:`~vsrq.models.mgldvsr.small`.
"""

from vsrq.models.mgldvsr.checkpoint import (
    find_official_weights,
    load_mgldvsr_unet,
    load_official_mgldvsr,
    load_video_vae,
    read_lightning_state_dict,
)
from vsrq.models.mgldvsr.config import PRESETS, MGLDVSRConfig, StructCondConfig, UNetConfig, VideoVAEConfig
from vsrq.models.mgldvsr.model import (
    CHECKPOINT_PARTS,
    MGLDVSR,
    UNET_CHECKPOINT,
    VAE_CHECKPOINT,
    MGLDVSRDenoiser,
    build_mgldvsr,
)
from vsrq.models.mgldvsr.sampler import SamplerConfig
from vsrq.models.mgldvsr.small import SmallConfig, SmallMGLDVSR, load_small, save_small

__all__ = [
    "CHECKPOINT_PARTS", "MGLDVSR", "PRESETS", "UNET_CHECKPOINT", "VAE_CHECKPOINT", "MGLDVSRConfig",
    "MGLDVSRDenoiser", "StructCondConfig", "UNetConfig", "VideoVAEConfig", "build_mgldvsr", "find_official_weights",
    "load_mgldvsr_unet", "load_official_mgldvsr", "load_small", "load_video_vae", "read_lightning_state_dict",
    "SamplerConfig", "SmallConfig", "SmallMGLDVSR", "save_small",
]
