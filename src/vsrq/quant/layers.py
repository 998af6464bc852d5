"""The quantized layer that replaces Conv2d, Conv3d, Linear and ConvTranspose2d.

    y = op(Q_A(rot(x)), Q_W(rot_w(W - L1 L2)), b) + L1 L2 x + A_bias

Every term but the first is optional: the plain layer of static PTQ is ``op(Q_A(x), Q_W(W), b)``;
QuaRot adds the Hadamard rotation; SVDQuant and QuantVSR add the full-precision low-rank branch
(``lowrank_up`` L1: out x r, ``lowrank_down`` L2: r x in*k); QuantVSR adds the learnable bias
alignment ``A_bias``, folded into ``b`` for inference. For convolutions the rotation acts on
input channels, shared by all kernel taps, and L2 is a conv with the layer's geometry followed
by a 1x1 conv L1.

After :meth:`QuantLayer.freeze_weight` the float weight is gone: the layer holds integer codes
and per-row scales, exactly what a checkpoint stores.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.config import QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.quant.grid import quantize_to_int
from vsrq.quant.quantizer import FakeQuantizer
from vsrq.quant.rotation import HadamardRotation

SUPPORTED: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.Linear: "linear",
    nn.ConvTranspose2d: "convtranspose2d",
}


class QuantLayer(nn.Module):
    """A fake-quantized replacement for one supported layer (see the module docstring)."""

    def __init__(self, module: nn.Module, weight_spec: QuantizerSpec | None, act_spec: QuantizerSpec | None) -> None:
        super().__init__()
        kind = SUPPORTED.get(type(module))
        if kind is None:
            raise VsrqError(f"unsupported layer type {type(module).__name__}")
        self.kind = kind
        self.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)
        self.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        if kind == "linear":
            self.geometry: dict = {}
        else:
            self.geometry = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
            if kind == "convtranspose2d":
                self.geometry["output_padding"] = module.output_padding
        # weight layout: output channels on axis 0, inputs on axis 1 (ConvTranspose2d swaps them)
        self.out_axis, self.in_axis = (1, 0) if kind == "convtranspose2d" else (0, 1)
        self.act_axis = -1 if kind == "linear" else 1
        self.weight_quantizer = None if weight_spec is None else FakeQuantizer(weight_spec, "weight", self.out_axis)
        self.input_quantizer = None if act_spec is None else FakeQuantizer(act_spec, "act", self.act_axis)
        self.rotation: HadamardRotation | None = None
        self.lowrank_up: nn.Parameter | None = None
        self.lowrank_down: nn.Parameter | None = None
        self.bias_align: nn.Parameter | None = None
        self.register_buffer("smooth", None)  # per-input-channel scale s (SmoothQuant): x/s, W*s
        self.mode = "quant"  # "quant" | "observe" (feed the input observer, output FP) | "fp"
        self._cache: tuple[tuple, torch.Tensor] | None = None

    # --- structure --------------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        shape = self._weight_shape()
        return shape[self.out_axis] * (self.geometry.get("groups", 1) if self.kind == "convtranspose2d" else 1)

    @property
    def in_channels(self) -> int:
        shape = self._weight_shape()
        groups = self.geometry.get("groups", 1)
        return shape[self.in_axis] * (groups if self.kind != "convtranspose2d" else 1)

    def _weight_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape) if self.weight is not None else tuple(self.weight_int.shape)

    @property
    def rank(self) -> int:
        return 0 if self.lowrank_up is None else int(self.lowrank_up.shape[1])

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "QuantLayer":
        self._cache = None  # a device or dtype move must not leave the cached weight behind
        return super()._apply(fn, recurse)

    def add_rotation(self, seed: int) -> None:
        if self.geometry.get("groups", 1) != 1:
            raise VsrqError("Hadamard rotation of grouped convolutions is not supported")
        self.rotation = HadamardRotation(self.in_channels, seed=seed).to(self.weight.device)
        self._cache = None

    def add_lowrank(self, up: torch.Tensor, down: torch.Tensor) -> None:
        """Install the FP branch: ``up`` (out, r), ``down`` (r, in * prod(kernel)).

        Stored contiguous, as a loaded checkpoint holds them: an SVD's factors are often transposed views, and a
        GEMM on other strides may take another kernel and round differently (AMX CPUs do), so the model just
        calibrated and its reloaded checkpoint would not give the same bytes."""
        if self.kind == "convtranspose2d" or self.geometry.get("groups", 1) != 1:
            raise VsrqError(f"a low-rank branch on {self.kind} with groups is not supported")
        self.lowrank_up = nn.Parameter(up.detach().float().clone(memory_format=torch.contiguous_format))
        self.lowrank_down = nn.Parameter(down.detach().float().clone(memory_format=torch.contiguous_format))
        self._cache = None

    def add_smoothing(self, scale: torch.Tensor) -> None:
        """Migrate activation outliers into the weight: inputs divided by ``scale`` per channel, weight multiplied.

        Must come before a low-rank branch or rotation is added (they are built on the smoothed weight).
        """
        if self.rank or self.rotation is not None:
            raise VsrqError("add smoothing before the low-rank branch and the rotation")
        shape = [1] * self.weight.dim()
        shape[self.in_axis] = -1
        self.weight.data = self.weight.data * scale.view(shape)
        self.smooth = scale.detach().clone().float()
        self._cache = None

    def unsmooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is None:
            return x
        shape = [1] * x.dim()
        shape[self.act_axis] = -1
        return x / self.smooth.view(shape)

    def add_bias_alignment(self) -> None:
        self.bias_align = nn.Parameter(torch.zeros(self.out_channels, device=self.weight.device))

    def fold_bias_alignment(self) -> None:
        """Absorb A_bias into the bias: inference then costs nothing extra."""
        if self.bias_align is None:
            return
        folded = self.bias_align.detach().clone() if self.bias is None else self.bias.detach() + self.bias_align.detach()
        self.bias = nn.Parameter(folded, requires_grad=False)
        self.bias_align = None

    # --- weights ----------------------------------------------------------------------------------
    def weight_matrix(self) -> torch.Tensor:
        """The float weight as (out, in * prod(kernel)) for SVD and low-rank algebra."""
        w = self.weight.movedim(self.out_axis, 0) if self.kind == "convtranspose2d" else self.weight
        return w.reshape(w.shape[0], -1)

    def residual_weight(self) -> torch.Tensor:
        """W - L1 L2, rotated along the inputs: what the low-bit branch quantizes."""
        w = self.weight
        if self.lowrank_up is not None:
            w = w - (self.lowrank_up @ self.lowrank_down).reshape(w.shape)
        if self.rotation is not None:
            w = self.rotation.apply(w, dim=self.in_axis)
        return w

    def _cache_key(self) -> tuple:
        tensors = [self.weight, self.lowrank_up, self.lowrank_down]
        q = self.weight_quantizer
        if q is not None:
            tensors += [q.lower, q.upper, q.bit_offset, q.rounding]
        return tuple((id(t), t._version) if t is not None else None for t in tensors) + (
            q.current_bits() if q is not None else None, q.hard_rounding if q is not None else None,
        )

    def quantized_weight(self) -> torch.Tensor:
        """The weight the low-bit branch uses; cached while nothing that shapes it changes."""
        if self.weight is None:  # frozen: integer codes and per-row scales
            return self._dequantize_frozen()
        if self.weight_quantizer is None:
            return self.residual_weight()
        if torch.is_grad_enabled():
            self._cache = None
            return self.weight_quantizer(self.residual_weight())
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.weight_quantizer(self.residual_weight()))
        return self._cache[1]

    def start_learned_rounding(self) -> nn.Parameter:
        """AdaRound variables for this layer's weight (see :mod:`vsrq.quant.rounding`); the weight grid stays fixed."""
        q = self.weight_quantizer
        if q is None or self.weight is None:
            raise VsrqError("learned rounding needs a float weight and its quantizer")
        if self.rotation is not None or self.lowrank_up is not None:
            raise VsrqError("learned rounding of a rotated or low-rank-branched weight is not supported")
        self._cache = None
        return q.start_learned_rounding(self.weight)

    def harden_rounding(self) -> None:
        """Use the learned rounding's final choice (V >= 0: up) instead of the soft offset."""
        if self.weight_quantizer is not None and self.weight_quantizer.rounding is not None:
            self.weight_quantizer.hard_rounding = True
        self._cache = None

    def bake_rounding(self) -> None:
        """Make the learned rounding permanent: the float weight becomes its hard-rounded grid value, which
        round-to-nearest (checkpoints, packing, export) maps back to the same codes; the variables go."""
        q = self.weight_quantizer
        if q is None or q.rounding is None:
            return
        self.harden_rounding()
        with torch.no_grad():
            self.weight.copy_(q(self.weight))
        q.stop_learned_rounding()
        self._cache = None

    def drop_learned_rounding(self) -> None:
        """Forget the learned rounding (round to nearest again), leaving the weight as it was."""
        if self.weight_quantizer is not None:
            self.weight_quantizer.stop_learned_rounding()
        self._cache = None

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(integer codes shaped like the weight, scale per row, zero-point per row) at the current bits."""
        if self.weight is None:
            return self.weight_int, self.weight_scale, self.weight_zero_point
        q = self.weight_quantizer
        if q is None:
            raise VsrqError("a layer without a weight quantizer has no integer weight")
        with torch.no_grad():
            w = self.residual_weight()
            scale, zp = q.scale_and_zero_point()
            codes = quantize_to_int(q.to_rows(w), scale.view(-1, 1), zp.view(-1, 1), q.current_bits(), q.spec.symmetric)
            return q.from_rows(codes, w).to(torch.int16), scale.reshape(-1).clone(), zp.reshape(-1).clone()

    def freeze_weight(self, codes: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                      zero_point: torch.Tensor | None = None) -> None:
        """Replace the float weight by integer codes, scale and zero-point; outputs stay bit-identical.

        Without arguments the codes come from the current float weight; a checkpoint passes its own.
        """
        if codes is None:
            codes, scale, zero_point = self.weight_codes()
        self.register_buffer("weight_int", codes.to(torch.int16))
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("weight_zero_point", zero_point.float())
        self.weight = None
        self._cache = None

    def _dequantize_frozen(self) -> torch.Tensor:
        q = self.weight_quantizer
        rows = q.to_rows(self.weight_int.float())
        deq = (rows - self.weight_zero_point.view(-1, 1)) * self.weight_scale.view(-1, 1)
        return q.from_rows(deq, self.weight_int)

    # --- forward ----------------------------------------------------------------------------------
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        if self.kind == "conv2d":
            return F.conv2d(x, w, b, **self.geometry)
        if self.kind == "conv3d":
            return F.conv3d(x, w, b, **self.geometry)
        return F.conv_transpose2d(x, w, b, **self.geometry)

    def lowrank_branch(self, x: torch.Tensor) -> torch.Tensor:
        """X L1 L2 in full precision: L2 with the layer's geometry, then L1 as a 1x1 map."""
        r = self.rank
        if self.kind == "linear":
            return F.linear(F.linear(x, self.lowrank_down), self.lowrank_up)
        kernel = self._weight_shape()[2:]
        down = self.lowrank_down.reshape(r, self.in_channels, *kernel)
        up = self.lowrank_up.reshape(self.out_channels, r, *([1] * len(kernel)))
        if self.kind == "conv2d":
            return F.conv2d(F.conv2d(x, down, None, **self.geometry), up)
        return F.conv3d(F.conv3d(x, down, None, **self.geometry), up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unsmooth(x)
        if self.mode != "quant":  # calibration: the float layer, optionally observing its (rotated) input
            if self.weight is None:
                raise VsrqError("a frozen (integer) layer has no float weight to run in full precision")
            if self.mode == "observe" and self.input_quantizer is not None:
                self.input_quantizer.observe(x if self.rotation is None else self.rotation.apply(x, dim=self.act_axis))
            return self._op(x, self.weight, self.bias)
        xin = x if self.rotation is None else self.rotation.apply(x, dim=self.act_axis)
        if self.input_quantizer is not None:
            xin = self.input_quantizer(xin)
        y = self._op(xin, self.quantized_weight(), self.bias)
        if self.rank:
            y = y + self.lowrank_branch(x)
        if self.bias_align is not None:
            shape = [1] * y.dim()
            shape[self.act_axis] = -1
            y = y + self.bias_align.view(shape)
        return y

    def extra_repr(self) -> str:
        parts = [self.kind, f"in={self.in_channels}", f"out={self.out_channels}"]
        if self.rank:
            parts.append(f"rank={self.rank}")
        if self.rotation is not None:
            parts.append("hadamard")
        if self.weight is None:
            parts.append("frozen-int")
        return ", ".join(parts)


@contextmanager
def layer_modes(layers: Iterable[QuantLayer], mode: str) -> Iterator[None]:
    """Run a block with ``layers`` in ``mode`` ("quant", "observe" or "fp"); each gets its previous mode back
    afterwards, also when the block fails. Nest two for mixed modes."""
    if mode not in ("quant", "observe", "fp"):
        raise ValueError(f"unknown layer mode {mode!r}")
    layers = list(layers)
    previous = [layer.mode for layer in layers]
    for layer in layers:
        layer.mode = mode
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            layer.mode = before
