"""Uniform affine fake-quantization with a straight-through estimator.

The arithmetic is PyTorch's ``fake_quantize_per_*_affine``: ``q = clamp(round(x/S + z), qmin, qmax)``
and ``x_hat = (q - z) * S`` with an integer zero-point ``z``, so simulated outputs equal what an
integer kernel computes. Rounding passes gradients straight through; the clip bounds (``lower``,
``upper``) and a fractional bit offset are learnable, which range fine-tuning and bit adaptation
(QBasicVSR) need.

Outputs of this module are a *simulation* of integer inference (float tensors on the integer
grid); real integer execution lives in :mod:`vsrq.runtime`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from vsrq.config import MAX_BITS, MIN_BITS, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.quant.grid import Bits, fake_quantize, int_range, round_ste, scale_zero_point
from vsrq.quant.observers import Observer, make_observer
from vsrq.quant.rounding import rectified_sigmoid, rounding_at_nearest


class FakeQuantizer(nn.Module):
    """Quantizes one tensor: a layer's weight (``role="weight"``) or its input (``role="act"``).

    ``axis`` is the weight's output-channel axis or the activation's channel axis. Ranges are one
    per *row*: the whole tensor, each channel, each token (activation positions, dynamic only) or
    each group of ``group_size`` values (along a weight's inputs; along an activation's channels
    per token, dynamic only).

    ``mode`` is ``"quant"`` (fake-quantize) or ``"off"`` (identity); :meth:`observe` feeds the
    observer during calibration.

    Bits are ``bits + round(bit_offset) + shared_offset``: ``bits`` is the layer's base width,
    ``bit_offset`` an optional learnable per-layer offset (TS-LBA), ``shared_offset`` a tensor set
    per input by a controller (FG-VBA's per-video offset); the sum is kept within 2..8.

    A dynamic quantizer may carry a calibrated ``clip_ratio`` c: each run-time range [min, max]
    becomes [c min, c max], trading clipped outliers for a finer grid (at 4 bits over a large tensor
    the extremes sit far in the tail).

    Two states exist only while block reconstruction trains a unit: ``rounding`` (a static weight
    quantizer's AdaRound variables, :mod:`vsrq.quant.rounding`; its grid is then fixed) and ``drop``
    (QDrop: each activation skips quantization with this probability, drawn from ``drop_generator``).
    """

    def __init__(self, spec: QuantizerSpec, role: str = "act", axis: int = 1) -> None:
        super().__init__()
        if role not in ("weight", "act"):
            raise ValueError(role)
        if not spec.dynamic and spec.granularity == "token":
            raise VsrqError("per-token ranges exist only at run time: use a dynamic quantizer")
        if role == "act" and not spec.dynamic and spec.granularity == "group":
            raise VsrqError("activation groups are per token: use a dynamic quantizer")
        self.spec = spec
        self.role = role
        self.axis = axis
        self.owner = ""  # the quantized layer's name, for error messages (set when layers are swapped in)
        self.bits = spec.bits
        self.mode = "quant"
        self.bit_offset: nn.Parameter | None = None
        self.shared_offset: torch.Tensor | None = None
        self.observer: Observer | None = None if spec.dynamic else make_observer(spec)
        self.lower: nn.Parameter | None = None
        self.upper: nn.Parameter | None = None
        self.register_buffer("clip_ratio", None)
        self.rounding: nn.Parameter | None = None
        self.hard_rounding = False
        self.drop = 0.0
        self.drop_generator: torch.Generator | None = None

    # --- rows -----------------------------------------------------------------------------------
    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` as (rows, values), one independently quantized slice per row."""
        g = self.spec.granularity
        if g == "tensor":
            return x.reshape(1, -1)
        if g == "channel":
            return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        if g == "token":
            return x.movedim(self.axis, -1).reshape(-1, x.shape[self.axis])
        size = self.spec.group_size
        rows = x.movedim(self.axis, 0 if self.role == "weight" else -1)
        if rows.numel() % size or (self.role == "act" and rows.shape[-1] % size):
            raise VsrqError(f"group size {size} does not divide the {x.shape[self.axis]} channels of {tuple(x.shape)}")
        if self.role == "weight" and rows[0].numel() % size:
            raise VsrqError(f"group size {size} does not divide the {rows[0].numel()} inputs per output channel")
        return rows.reshape(-1, size)

    def from_rows(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        g = self.spec.granularity
        if g == "tensor":
            return rows.reshape(like.shape)
        moved_to = -1 if g == "token" or (g == "group" and self.role == "act") else 0
        moved_shape = like.movedim(self.axis, moved_to).shape
        return rows.reshape(moved_shape).movedim(moved_to, self.axis)

    # --- bits -----------------------------------------------------------------------------------
    def effective_bits(self) -> Bits:
        """The bit-width in use now: an int when nothing adapts, else a tensor that carries gradients."""
        if self.bit_offset is None and self.shared_offset is None:
            return self.bits
        offset = self.bit_offset if self.bit_offset is not None else self.shared_offset
        b = torch.tensor(float(self.bits), device=offset.device)
        if self.bit_offset is not None:
            b = b + round_ste(self.bit_offset)
        if self.shared_offset is not None:
            b = b + self.shared_offset
        return torch.clamp(b, MIN_BITS, MAX_BITS)

    def layer_bits(self) -> int:
        """The layer's own bits, base plus its (rounded) offset, without the transient per-input offset."""
        offset = 0 if self.bit_offset is None else int(round(float(self.bit_offset.detach())))
        return int(min(MAX_BITS, max(MIN_BITS, self.bits + offset)))

    def current_bits(self) -> int:
        """The integer bit-width of the next forward pass (for accounting, packing and export)."""
        b = self.effective_bits()
        return int(round(float(b.detach()))) if isinstance(b, torch.Tensor) else int(b)

    # --- ranges ---------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return self.spec.dynamic or self.upper is not None

    def set_range(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        """Install a static clip range (one value per row) as learnable parameters."""
        lower = lower.detach().float().reshape(-1).clone()
        upper = upper.detach().float().reshape(-1).clone()
        if self.lower is None:
            self.lower, self.upper = nn.Parameter(lower), nn.Parameter(upper)
        else:
            self.lower.data, self.upper.data = lower, upper

    def finish_observation(self, bits: int | None = None) -> None:
        """Turn the observer's statistics into a clip range for ``bits`` (default: current bits)."""
        if self.observer is None:
            return
        if not self.observer.seen:
            raise VsrqError("a quantizer saw no data during calibration: the calibration clips never reached it")
        lower, upper = self.observer.compute(bits or self.current_bits(), self.spec.symmetric)
        self.set_range(lower, upper)

    def observe(self, x: torch.Tensor) -> None:
        """Feed calibration statistics (static quantizers only)."""
        if self.observer is not None:
            self.observer.update(self.to_rows(_finite(x.detach(), self)))

    def init_from_tensor(self, x: torch.Tensor) -> None:
        """Calibrate a static range from one tensor (a weight)."""
        if self.observer is not None:
            self.observe(x)
            self.finish_observation()

    def freeze_range(self, x: torch.Tensor) -> None:
        """Turn a dynamic quantizer static, with min/max ranges of ``x`` (per row): what a checkpoint stores."""
        lower, upper = self._dynamic_range(self.to_rows(_finite(x.detach(), self)), 1)
        self.spec = replace(self.spec, dynamic=False, observer="minmax")
        self.observer = None
        self.clip_ratio = None  # now inside the static range
        self.set_range(lower, upper)

    def set_clip_ratio(self, ratio: float | torch.Tensor | None) -> None:
        """Scale every dynamic range by ``ratio`` (0 < ratio <= 1); None removes the clip."""
        if ratio is None:
            self.clip_ratio = None
            return
        if not self.spec.dynamic:
            raise VsrqError("a clip ratio scales run-time ranges: the quantizer must be dynamic")
        ratio = torch.as_tensor(ratio, dtype=torch.float32).reshape(())
        if not 0.0 < float(ratio) <= 1.0:
            raise VsrqError(f"clip ratio must be in (0, 1], got {float(ratio)}")
        self.clip_ratio = ratio.clone()

    def _dynamic_range(self, x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run-time [min, max] of ``x`` (whole tensor, or per row along ``dim``), scaled by the clip ratio."""
        if dim is None:
            lower, upper = x.amin(), x.amax()
        else:
            lower, upper = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
        if self.clip_ratio is None:
            return lower, upper
        c = self.clip_ratio.to(x)  # the input's dtype and device
        return lower * c, upper * c

    def release_observer(self) -> None:
        """Drop stored statistics once ranges are final (OMSE keeps a sample of values per layer)."""
        if self.observer is not None:
            self.observer.reset()

    # --- learned rounding (AdaRound) -------------------------------------------------------------
    def start_learned_rounding(self, w: torch.Tensor) -> nn.Parameter:
        """AdaRound variables for weight ``w`` on the current grid, starting at ``w`` itself (h(V) = frac(w/S)), with
        the hard choice (V >= 0: up) round-to-nearest's exactly, ties and the last bit of w/S included."""
        if self.role != "weight" or self.spec.dynamic:
            raise VsrqError("learned rounding applies to static weight quantizers")
        scale, _ = self.scale_and_zero_point()
        rows = self.to_rows(w.detach()) * (1.0 / scale.reshape(-1, 1))  # w/S as round-to-nearest computes it
        self.rounding = nn.Parameter(rounding_at_nearest(rows))
        self.hard_rounding = False
        return self.rounding

    def stop_learned_rounding(self) -> None:
        self.rounding = None
        self.hard_rounding = False

    def _learned_rounding(self, x: torch.Tensor, bits: Bits) -> torch.Tensor:
        """floor(x/S) + z + h(V), clamped: the grid is fixed, only the up/down choice learns."""
        qmin, qmax = int_range(bits, self.spec.symmetric)
        lower, upper = (t.detach().reshape(-1, 1) for t in self._static_range())
        scale, zp = scale_zero_point(lower, upper, bits, self.spec.symmetric)
        up = (self.rounding >= 0).to(x.dtype) if self.hard_rounding else rectified_sigmoid(self.rounding)
        q = torch.clamp(torch.floor(self.to_rows(x.detach()) * (1.0 / scale)) + zp + up, qmin, qmax)
        return self.from_rows((q - zp) * scale, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        out = self._quantize(x)
        if self.drop > 0.0:  # QDrop: these positions pass unquantized
            # the CPU generator's draw on every device: one seed, one set of dropped elements
            keep = torch.rand(x.shape, generator=self.drop_generator, dtype=x.dtype).to(x.device) < self.drop
            out = torch.where(keep, x, out)
        return out

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.effective_bits()
        if self.rounding is not None:
            return self._learned_rounding(x, bits)
        qmin, qmax = int_range(bits, self.spec.symmetric)
        if self.spec.granularity == "tensor":
            if self.spec.dynamic:
                lower, upper = self._dynamic_range(x, None)
            else:
                lower, upper = self._static_range()
            scale, zp = scale_zero_point(lower, upper, bits, self.spec.symmetric)
            return fake_quantize(x, scale, zp, qmin, qmax)
        rows = self.to_rows(x)
        if self.spec.dynamic:
            lower, upper = self._dynamic_range(rows, 1)
        else:
            lower, upper = (t.view(-1, 1) for t in self._static_range())
        scale, zp = scale_zero_point(lower, upper, bits, self.spec.symmetric)
        return self.from_rows(fake_quantize(rows, scale, zp, qmin, qmax), x)

    def _static_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.upper is None:
            raise VsrqError("quantizer used before calibration: run a method's calibration first")
        if self.spec.granularity == "tensor":
            return self.lower.reshape(()), self.upper.reshape(())
        return self.lower, self.upper

    def scale_and_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Static scale and zero-point per row at the current bits (for packing and export)."""
        lower, upper = self._static_range()
        with torch.no_grad():
            return scale_zero_point(lower, upper, self.current_bits(), self.spec.symmetric)

    def extra_repr(self) -> str:
        s = self.spec
        kind = "sym" if s.symmetric else "asym"
        rng = "dynamic" if s.dynamic else s.observer
        if self.clip_ratio is not None:
            rng += f" x{float(self.clip_ratio):.2f}"
        return f"{self.role}, bits={self.bits}, {kind}, per-{s.granularity}, {rng}, mode={self.mode}"


def _finite(x: torch.Tensor, quantizer: FakeQuantizer) -> torch.Tensor:
    """Calibration data must be finite: a NaN or inf range would quantize everything to NaN."""
    if not bool(torch.isfinite(x).all()):
        what = "weights" if quantizer.role == "weight" else "input activations"
        where = f"layer {quantizer.owner}" if quantizer.owner else "a quantizer"
        raise VsrqError(f"{where}: its {what} hold NaN or inf during calibration (the float model overflows on "
                        "this data, or its weights are not finite); no checkpoint written")
    return x
