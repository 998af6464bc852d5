"""The method registry and what every recipe shares: the calibration context and its passes.

A method says how each selected layer is quantized (:meth:`Method.layer_specs`) and how the
quantized model is calibrated (:meth:`Method.calibrate`); it composes quantizers, observers and
the shared loops here instead of writing its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from vsrq.config import LayerRule, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.memory import release_free_memory
from vsrq.models.host import ModelCall, ModelHost
from vsrq.progress import progress
from vsrq.quant.controller import InputController
from vsrq.quant.layers import QuantLayer, layer_modes
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.swap import LayerChoice

Log = Callable[[str], None]


@dataclass
class CalibContext:
    """Everything a method's calibration sees. Model facts come from ``host``, never from the model's type."""

    teacher: nn.Module | None  # the untouched float model, never modified (None: quantized in place)
    base: nn.Module  # the model with QuantLayers swapped in, calibrated in place
    layers: dict[str, QuantLayer]
    calib: Any  # calibration data in the form the host's forward loop takes
    config: QuantConfig
    host: ModelHost
    log: Log = print
    show_progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)  # method facts recorded in the manifest
    device: torch.device = torch.device("cpu")  # where both models sit and every call goes

    @property
    def fp_model(self) -> nn.Module:
        """The float teacher; a recipe that needs one fails here, by name, on a model quantized in place."""
        if self.teacher is None:
            raise VsrqError(f"{self.config.method} as configured trains against the float model, which in-place "
                            "quantization does not keep: quantize a copy (inplace=False)")
        return self.teacher

    def calls(self, batch_size: int = 4, indices: list[int] | None = None) -> Iterator[ModelCall]:
        """The host's forward loop over the calibration data (all items, or those at ``indices``), in order."""
        return self.host.calls(self.calib, batch_size, indices, self.device)

    def run(self, model: nn.Module, call: ModelCall) -> torch.Tensor:
        """One call of the float model, the base network or a :class:`QuantizedModel` (through its controller)."""
        if isinstance(model, QuantizedModel):
            return model(*call.args, **call.kwargs)
        return self.host.forward(model, *call.args, **call.kwargs)


class Method:
    """A quantization recipe. Subclasses set ``name`` and override what they change."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}
    fixed: ClassVar[dict[str, Any]] = {}  # QuantConfig fields the recipe itself sets (e.g. split_concat)

    def __init__(self, config: QuantConfig) -> None:
        unknown = set(config.options) - set(self.default_options)
        if unknown:
            raise VsrqError(f"method {self.name} has no option(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(self.default_options)) or 'none'}")
        self.config = replace(config, **self.fixed) if self.fixed else config
        self.options = {**self.default_options, **config.options}

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec | None, QuantizerSpec | None]:
        raise NotImplementedError

    def check_host(self, host: ModelHost, model: nn.Module) -> None:
        """Fail at once, by name, when the recipe as configured needs a fact the family's host lacks."""

    def host_rules(self, host: ModelHost, model: nn.Module) -> tuple[LayerRule, ...]:
        """Per-layer rules the recipe adds on this family, after the config's own (which win where both
        apply). Default: none."""
        return ()

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        raise NotImplementedError

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        """Add to freshly swapped ``layers`` the tensors calibration would add (rotations, branches of ``ranks``,
        folded biases), values aside, and return the per-input controller it would make: what sizes a checkpoint
        without calibrating. Default: none."""
        return None


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"bad or duplicate method name {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


# --- shared calibration passes ------------------------------------------------------------------


class InputStatistics:
    """Base of per-layer input statistics gathered during a float pass (TS-LBA, STCA, the clip search).

    Used as a context manager around the pass. By default :meth:`record` receives each layer's input one
    frame at a time, ``(clips, C, ...)``, in temporal order, as the host's time layout says (one frame per
    call for a recurrent model, T frames per call for one that batches them); :meth:`end_call` closes the
    sequences of one model call. With ``per_frame`` False it receives each call's input as it is.
    """

    dtype: ClassVar[torch.dtype | None] = torch.float64  # what :meth:`record` receives (None: the input as it is)
    per_frame: ClassVar[bool] = True

    def __init__(self, layers: dict[str, QuantLayer], host: ModelHost) -> None:
        self.layers = layers
        self.host = host
        self.clips = 1  # calibration items in the current model call
        self._hooks: list = []

    def __enter__(self) -> "InputStatistics":
        def hook(name: str, layer: QuantLayer, x: torch.Tensor) -> None:
            x = x.detach() if self.dtype is None else x.detach().to(self.dtype)
            if not self.per_frame:
                self.record(name, x)
                return
            frames = self.host.frames(name, x, self.clips, layer.act_axis)
            for t in range(frames.shape[1]):
                self.record(name, frames[:, t])

        for name, layer in self.layers.items():
            self._hooks.append(layer.register_forward_pre_hook(
                lambda m, inputs, name=name: hook(name, m, inputs[0])))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def record(self, name: str, x: torch.Tensor) -> None:
        raise NotImplementedError

    def end_call(self) -> None:
        raise NotImplementedError

    def run(self, ctx: "CalibContext") -> None:
        """One float pass of ``ctx.base`` over the calibration data, call by call."""
        with layer_modes(ctx.layers.values(), "fp"), self, torch.no_grad():
            for call in ctx.calls():
                self.clips = call.size
                ctx.run(ctx.base, call)
                self.end_call()
                release_free_memory()


def run_model(ctx: CalibContext, model: nn.Module, desc: str, batch_size: int = 4) -> None:
    """One no-grad pass of ``model`` over the calibration data."""
    calls = list(ctx.calls(batch_size))
    with torch.no_grad(), progress(total=len(calls), desc=desc, unit="batch", enabled=ctx.show_progress) as bar:
        for call in calls:
            ctx.run(model, call)
            release_free_memory()
            bar.update(1)


def init_weight_ranges(layers: dict[str, QuantLayer]) -> None:
    """Static weight ranges from each layer's (residual, rotated) weight."""
    for layer in layers.values():
        if layer.weight_quantizer is not None and not layer.weight_quantizer.spec.dynamic:
            layer.weight_quantizer.init_from_tensor(layer.residual_weight())


def observe_activations(ctx: CalibContext, layers: dict[str, QuantLayer] | None = None, keep: bool = False) -> None:
    """Collect input statistics of ``layers`` with the float network, then set their static ranges.

    ``keep`` leaves the observers' samples in place for a later refresh (TS-LBA re-runs OMSE
    once per-layer bits are known).
    """
    layers = ctx.layers if layers is None else layers
    static = {n: l for n, l in layers.items() if l.input_quantizer is not None and not l.input_quantizer.spec.dynamic}
    if not static:
        return
    with layer_modes(ctx.layers.values(), "fp"), layer_modes(static.values(), "observe"):
        run_model(ctx, ctx.base, "observe")
    for name, layer in static.items():
        if not layer.input_quantizer.observer.seen:
            raise VsrqError(f"layer {name} never ran on the calibration clips")
        layer.input_quantizer.finish_observation()
        if not keep:
            layer.input_quantizer.release_observer()
