"""Loading MGLD-VSR's official Lightning checkpoints, and where vsrq looks for them.

A Lightning checkpoint stores the whole training module under ``state_dict``: besides the networks
vsrq builds it holds others (``first_stage_model.*``: SD's own VAE; ``cond_stage_model.*``: the
OpenCLIP text encoder; ``loss.*``: LPIPS and the discriminator; the noise schedule's buffers). A
loader takes the keys under the prefixes of the networks it builds and requires those to match
exactly (no missing, no unexpected, no shape differences); keys under other prefixes are left alone.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.config import MGLDVSRConfig, resolve_config
from vsrq.models.mgldvsr.model import MGLDVSR, UNET_CHECKPOINT, VAE_CHECKPOINT, MGLDVSRDenoiser
from vsrq.models.mgldvsr.vae import VideoVAE
from vsrq.models.weights import WEIGHTS_ENV, load_state_dict_strict

DENOISER_PREFIXES = ("model.diffusion_model.", "structcond_stage_model.")
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
WHERE_TO_GET = "the links in the MGLD-VSR README (github.com/IanYeung/MGLD-VSR, BaiduNetDisk or OneDrive)"


def read_lightning_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict), read as tensors only."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"{path}: no such checkpoint file")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise VsrqError(f"{path} pickles Python objects besides tensors and vsrq reads tensors only; re-save it as "
                        "torch.save({'state_dict': ckpt['state_dict']}, path) where you trust the file") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise VsrqError(f"{path}: cannot read as a PyTorch checkpoint ({type(exc).__name__})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VsrqError(f"{path}: no 'state_dict' of tensors; not a Lightning checkpoint")
    return state


def load_owned(factory: Callable[[], nn.Module], state: dict[str, torch.Tensor], prefixes: tuple[str, ...],
               source: str) -> nn.Module:
    """Build ``factory()`` and load the keys under ``prefixes`` strictly (the module's keys carry them too).

    The module is built on the meta device and given uninitialized storage, so a full-size model
    costs no random initialization and a wrong file fails at once.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    load_state_dict_strict(module, {k: v for k, v in state.items() if k.startswith(prefixes)}, source)
    return module.eval()


def load_mgldvsr_unet(path: str | Path, config: MGLDVSRConfig | str = "full") -> MGLDVSRDenoiser:
    """The UNet and struct-cond encoder from ``mgldvsr_unet.ckpt``, in eval mode."""
    cfg = resolve_config(config)
    return load_owned(lambda: MGLDVSRDenoiser(cfg), read_lightning_state_dict(path), DENOISER_PREFIXES, str(path))


def load_video_vae(path: str | Path, config: MGLDVSRConfig | str = "full") -> VideoVAE:
    """The video VAE (encoder, CFW decoder) from ``video_vae_cfw.ckpt``, in eval mode."""
    cfg = resolve_config(config)
    return load_owned(lambda: VideoVAE(cfg.vae), read_lightning_state_dict(path), VAE_PREFIXES, str(path))


def find_official_weights() -> tuple[Path, Path]:
    """Both official files from the ``VSRQ_WEIGHTS`` folder; vsrq ships no MGLD-VSR weights and downloads none."""
    folder = os.environ.get(WEIGHTS_ENV)
    if folder:
        unet, vae = Path(folder) / UNET_CHECKPOINT, Path(folder) / VAE_CHECKPOINT
        missing = [p.name for p in (unet, vae) if not p.is_file()]
        if not missing:
            return unet, vae
        problem = f"{folder} lacks {', '.join(missing)}"
    else:
        problem = f"{WEIGHTS_ENV} is not set"
    raise VsrqError(f"no MGLD-VSR weights are available ({problem}): vsrq ships none; get {UNET_CHECKPOINT} and "
                    f"{VAE_CHECKPOINT} from {WHERE_TO_GET}, put them in one folder and set {WEIGHTS_ENV} to it "
                    "(`vsrq info mgldvsr` needs no weights)")


def load_official_mgldvsr(config: MGLDVSRConfig | str = "full") -> tuple[MGLDVSR, Path]:
    """The full model with both official checkpoints loaded; also the denoiser's path, for manifests."""
    unet_path, vae_path = find_official_weights()
    return MGLDVSR(load_mgldvsr_unet(unet_path, config), load_video_vae(vae_path, config)), unet_path
