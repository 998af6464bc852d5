"""The method registry and what every recipe shares: the calibration context and its passes.

A method says how each selected layer is quantized (:meth:`Method.layer_specs`) and how the
quantized model is calibrated (:meth:`Method.calibrate`); it composes quantizers, observers and
the shared loops here instead of writing its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from vsrq.config import QuantConfig, QuantizerSpec
from vsrq.data.clips import CalibrationSet
from vsrq.errors import VsrqError
from vsrq.progress import progress
from vsrq.quant.layers import QuantLayer
from vsrq.quant.qmodel import InputController
from vsrq.quant.swap import LayerChoice

Log = Callable[[str], None]


@dataclass
class CalibContext:
    """Everything a method's calibration sees."""

    fp_model: nn.Module  # the untouched float model: the teacher, never modified
    base: nn.Module  # the model with QuantLayers swapped in, calibrated in place
    layers: dict[str, QuantLayer]
    calib: CalibrationSet
    config: QuantConfig
    arch: str = ""  # the architecture name, for model facts such as feature blocks
    log: Log = print
    show_progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)  # method facts recorded in the manifest
    device: torch.device = torch.device("cpu")  # where both models sit and every batch goes

    def batches(self, batch_size: int = 4, indices: list[int] | None = None) -> Iterator[torch.Tensor]:
        """Calibration clips (all, or those at ``indices``) stacked (B, T, 3, h, w), in order; clips of
        one shape share batches."""
        clips = self.calib.clips if indices is None else [self.calib.clips[i] for i in indices]
        for i in range(0, len(clips), batch_size):
            group = clips[i : i + batch_size]
            if len({tuple(c.shape) for c in group}) == 1:
                yield torch.stack(group).to(self.device)
            else:
                yield from (c[None].to(self.device) for c in group)


class Method:
    """A quantization recipe. Subclasses set ``name`` and override what they change."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: QuantConfig) -> None:
        unknown = set(config.options) - set(self.default_options)
        if unknown:
            raise VsrqError(f"method {self.name} has no option(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(self.default_options)) or 'none'}")
        self.config = config
        self.options = {**self.default_options, **config.options}

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec | None, QuantizerSpec | None]:
        raise NotImplementedError

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        raise NotImplementedError

    @classmethod
    def build_controller(cls, state: dict[str, Any] | None, base: nn.Module) -> InputController | None:
        """Recreate the per-input controller a checkpoint recorded (none for static methods)."""
        return None


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"bad or duplicate method name {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    import vsrq.methods  # noqa: F401  (registers every recipe)

    if name not in METHODS:
        raise VsrqError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# --- shared calibration passes ------------------------------------------------------------------


class InputStatistics:
    """Base of per-layer input statistics gathered during a float pass (TS-LBA, STCA).

    Used as a context manager around the pass: every layer's input goes to :meth:`record`;
    :meth:`end_batch` closes one batch of clips (their frames arrive one call per time step).
    """

    dtype: ClassVar[torch.dtype | None] = torch.float64  # what :meth:`record` receives (None: the input as it is)

    def __init__(self, layers: dict[str, QuantLayer]) -> None:
        self.layers = layers
        self._hooks: list = []

    def __enter__(self) -> "InputStatistics":
        def hook(name: str, x: torch.Tensor) -> None:
            self.record(name, x.detach() if self.dtype is None else x.detach().to(self.dtype))

        for name, layer in self.layers.items():
            self._hooks.append(layer.register_forward_pre_hook(lambda _m, inputs, name=name: hook(name, inputs[0])))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def record(self, name: str, x: torch.Tensor) -> None:
        raise NotImplementedError

    def end_batch(self) -> None:
        raise NotImplementedError

    def run(self, ctx: "CalibContext") -> None:
        """One float pass of ``ctx.base`` over the calibration clips, batch by batch."""
        for layer in ctx.layers.values():
            layer.mode = "fp"
        try:
            with self, torch.no_grad():
                for x in ctx.batches():
                    ctx.base(x)
                    self.end_batch()
        finally:
            for layer in ctx.layers.values():
                layer.mode = "quant"


def run_model(ctx: CalibContext, model: nn.Module, desc: str, batch_size: int = 4) -> None:
    """One no-grad pass of ``model`` over the calibration clips."""
    batches = list(ctx.batches(batch_size))
    with torch.no_grad(), progress(total=len(batches), desc=desc, unit="batch", enabled=ctx.show_progress) as bar:
        for x in batches:
            model(x)
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
    for layer in ctx.layers.values():
        layer.mode = "fp"
    for layer in static.values():
        layer.mode = "observe"
    try:
        run_model(ctx, ctx.base, "observe")
    finally:
        for layer in ctx.layers.values():
            layer.mode = "quant"
    for name, layer in static.items():
        if not layer.input_quantizer.observer.seen:
            raise VsrqError(f"layer {name} never ran on the calibration clips")
        layer.input_quantizer.finish_observation()
        if not keep:
            layer.input_quantizer.release_observer()
