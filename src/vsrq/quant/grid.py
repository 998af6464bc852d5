"""The integer grid: uniform affine (fake-)quantization arithmetic shared by quantizers and observers.

``q = clamp(round(x/S + z), qmin, qmax)`` and ``x_hat = (q - z) * S`` with an integer zero-point
``z`` (PyTorch's ``fake_quantize_per_*_affine``), rounding straight-through so clip bounds and
step sizes can be learned.
"""

from __future__ import annotations

import torch

_EPS = 1e-8
Bits = torch.Tensor | int


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def int_range(bits: Bits, symmetric: bool) -> tuple[Bits, Bits]:
    """(qmin, qmax) of the integer grid: signed narrow for symmetric, 0..2^b-1 otherwise."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def _clamp(x: torch.Tensor, lo: Bits, hi: Bits) -> torch.Tensor:
    if isinstance(lo, int) and isinstance(hi, int):
        return torch.clamp(x, lo, hi)
    return torch.minimum(torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype)), torch.as_tensor(hi, dtype=x.dtype))


def scale_zero_point(lower: torch.Tensor, upper: torch.Tensor, bits: Bits, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero-point for the clip range [lower, upper], widened to contain 0.

    A symmetric grid is set by ``|upper|`` alone (its range is [-|upper|, |upper|], the single clip
    bound QBasicVSR learns for weights); ``lower`` is ignored.
    """
    _, qmax = int_range(bits, symmetric)
    if symmetric:
        scale = torch.clamp(upper.abs() / qmax, min=_EPS)
        return scale, torch.zeros_like(scale)
    lo = torch.clamp(lower, max=0.0)
    hi = torch.clamp(upper, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=_EPS)
    return scale, _clamp(round_ste(-lo / scale), 0, qmax)


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient back to the shape of ``like``."""
    if t.shape == like.shape:
        return t
    lead = t.dim() - like.dim()
    t = t.sum(dim=tuple(range(lead))) if lead > 0 else t
    dims = tuple(i for i, n in enumerate(like.shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


class _FakeQuantize(torch.autograd.Function):
    """Fake-quantization with straight-through rounding, written out so backward keeps only ``x``.

    Inside the grid: d/dx = 1, d/dS = round(v) - v, d/dz = 0 (v = x/S + z). Clamped below/above:
    d/dx = 0, d/dS = qmin - z / qmax - z, d/dz = -S, d/dqmin = S / d/dqmax = S. The autograd graph
    of the same formula would hold five full-size intermediates per call; recurrent fine-tuning
    cannot afford that.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):  # type: ignore[override]
        v = x * (1.0 / scale) + zero_point
        q = torch.minimum(torch.maximum(torch.round(v), qmin), qmax)
        ctx.save_for_backward(x, scale, zero_point, qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zero_point, qmin, qmax = ctx.saved_tensors
        v = x * (1.0 / scale) + zero_point
        r = torch.round(v)
        below, above = r < qmin, r > qmax
        inside = ~(below | above)
        gx = gs = gz = gmin = gmax = None
        if ctx.needs_input_grad[0]:
            gx = grad * inside
        if ctx.needs_input_grad[1]:
            ds = torch.where(inside, r - v, torch.where(below, qmin - zero_point, qmax - zero_point))
            gs = _sum_to(grad * ds, scale)
        if ctx.needs_input_grad[2]:
            gz = _sum_to(torch.where(inside, torch.zeros_like(grad), -grad * scale), zero_point)
        if ctx.needs_input_grad[3]:
            gmin = _sum_to(grad * below * scale, qmin)
        if ctx.needs_input_grad[4]:
            gmax = _sum_to(grad * above * scale, qmax)
        return gx, gs, gz, gmin, gmax


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: Bits, qmax: Bits) -> torch.Tensor:
    """x -> (clamp(round(x/S + z), qmin, qmax) - z) * S, rounding straight-through."""
    qmin_t = torch.as_tensor(qmin, dtype=x.dtype)
    qmax_t = torch.as_tensor(qmax, dtype=x.dtype)
    return _FakeQuantize.apply(x, scale.to(x.dtype), zero_point.to(x.dtype), qmin_t, qmax_t)


def quantize_to_int(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """The integer codes (int32) that :func:`fake_quantize` dequantizes; packing and export use them."""
    qmin, qmax = int_range(bits, symmetric)
    return torch.clamp(torch.round(x * (1.0 / scale) + zero_point), qmin, qmax).to(torch.int32)
