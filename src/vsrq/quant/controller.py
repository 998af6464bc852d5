"""Per-input quantization state set before each forward, and FG-VBA's video bits (QBasicVSR, Eqs. 3-9).

A controller analyses each input through its model's host (never the model's internals) and sets
state on the quantizers, e.g. FG-VBA's per-video activation bit offset b_v in {-1, 0, +1}. It lives
with the quantized model, so a checkpoint rebuilds it without any calibration code:
:func:`controller_from_manifest` maps the manifest's ``kind`` to its class.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.host import ModelCall, ModelHost
from vsrq.quant.layers import QuantLayer


class InputController(nn.Module):
    """Sets input-dependent quantization state before each forward.

    :meth:`prepare` returns extra keyword arguments for the model's forward (e.g. flows the host's
    motion source already computed), so analysis of the input costs nothing twice.
    """

    kind: ClassVar[str] = ""

    def attach(self, base: nn.Module, host: ModelHost) -> "InputController":
        self._target = (base, host)  # a tuple: the base network must not become a submodule of the controller
        return self

    def prepare(self, call: ModelCall) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def state_manifest(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_manifest(cls, state: dict[str, Any]) -> "InputController":  # pragma: no cover - interface
        raise NotImplementedError


# --- FG-VBA: flow-gradient video complexity -------------------------------------------------------


def _grad_l1(t: torch.Tensor) -> torch.Tensor:
    """Per-pixel |d/dx| + |d/dy| by forward differences (zero past the last row/column), (..., H, W)."""
    dx = torch.zeros_like(t)
    dy = torch.zeros_like(t)
    dx[..., :, :-1] = t[..., :, 1:] - t[..., :, :-1]
    dy[..., :-1, :] = t[..., 1:, :] - t[..., :-1, :]
    return dx.abs() + dy.abs()


def spatial_complexity(x: torch.Tensor) -> torch.Tensor:
    """S_t (Eq. 3): 10^3 x mean L1 gradient norm per frame; x (B, T, C, H, W) in [0, 1] -> (B, T).

    For colour frames the per-pixel norm is averaged over channels.
    """
    return 1e3 * _grad_l1(x).mean(dim=(2, 3, 4))


def temporal_complexity(flows: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """T_t (Eqs. 4-8): mean flow magnitude + gamma x mean flow-Jacobian L1 norm over the given flows.

    ``flows``: each (B, T-1, 2, H, W) in pixels (forward and backward). Returns (B, T-1).
    """
    magnitude = torch.stack([f.norm(dim=2).mean(dim=(2, 3)) for f in flows]).mean(dim=0)
    consistency = torch.stack([_grad_l1(f).sum(dim=2).mean(dim=(2, 3)) for f in flows]).mean(dim=0)
    return magnitude + gamma * consistency


def video_complexity(x: torch.Tensor, flows: list[torch.Tensor], gamma: float = 200.0, lam: float = 10.0) -> torch.Tensor:
    """C_video (Eq. 9) per video in the batch: mean_t S_t + lambda mean_t T_t."""
    return spatial_complexity(x).mean(dim=1) + lam * temporal_complexity(flows, gamma).mean(dim=1)


class _SurrogateStep(torch.autograd.Function):
    """Heaviside step forward; derivative of (1 + tanh(d / tau)) / 2 backward."""

    @staticmethod
    def forward(ctx, d, tau):  # type: ignore[override]
        ctx.save_for_backward(d)
        ctx.tau = tau
        return (d > 0).to(d.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (d,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(d / ctx.tau) ** 2) / (2 * ctx.tau), None


class VideoBitController(InputController):
    """FG-VBA at inference: complexity of the input video -> b_v in {-1, 0, +1} on every activation quantizer.

    Complexity is normalized so that the initial thresholds sit at 0 (the p_V-th percentile of the
    calibration clips, ``ref_low``) and 1 (``ref_high``); ``lower``/``upper`` are the trainable thresholds.
    Frames and flows come from the host's motion source.
    """

    kind = "video_bits"

    def __init__(self, ref_low: float, ref_high: float, gamma: float = 200.0, lam: float = 10.0, tau: float = 0.1,
                 allow_up: bool = True, lower: float = 0.0, upper: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("ref", torch.tensor([ref_low, ref_high], dtype=torch.float64))
        self.lower = nn.Parameter(torch.tensor(float(lower)))
        self.upper = nn.Parameter(torch.tensor(float(upper)))
        self.gamma, self.lam, self.tau, self.allow_up = gamma, lam, tau, allow_up
        self._quantizers: list = []
        self.last_complexity: torch.Tensor | None = None
        self.last_bits: torch.Tensor | None = None

    def attach(self, base: nn.Module, host: ModelHost) -> "VideoBitController":
        if not host.has_motion:
            raise VsrqError(f"per-video bits (FG-VBA) need a motion source; the {host.name} host declares none")
        super().attach(base, host)
        self._quantizers = [m.input_quantizer for m in base.modules()
                            if isinstance(m, QuantLayer) and m.input_quantizer is not None]
        for q in self._quantizers:
            if q.spec.granularity != "tensor":
                raise VsrqError("per-video activation bits need per-tensor activation quantizers")
        return self

    def normalized(self, complexity: torch.Tensor) -> torch.Tensor:
        lo, hi = float(self.ref[0]), float(self.ref[1])
        return (complexity - lo) / max(hi - lo, 1e-12)

    def video_bits(self, complexity: torch.Tensor) -> torch.Tensor:
        c = self.normalized(complexity).to(self.lower.dtype)
        b = -_SurrogateStep.apply(self.lower - c, self.tau)
        if self.allow_up:
            b = b + _SurrogateStep.apply(c - self.upper, self.tau)
        return b

    def prepare(self, call: ModelCall) -> dict[str, Any]:
        base, host = self._target
        with torch.no_grad():
            motion = host.motion(base, call)
            complexity = video_complexity(motion.frames, motion.flows, self.gamma, self.lam)
        bits = self.video_bits(complexity).view(-1, 1, 1, 1)
        self.last_complexity, self.last_bits = complexity, bits.detach().view(-1)
        for q in self._quantizers:
            q.shared_offset = bits
        return motion.forward_kwargs

    @contextmanager
    def fixed_offset(self, offset: int) -> Iterator[None]:
        """Every activation quantizer at ``offset`` bits, whatever the last input set (export builds one
        integer graph per offset)."""
        saved = [q.shared_offset for q in self._quantizers]
        for q in self._quantizers:
            q.shared_offset = torch.tensor(float(offset))
        try:
            yield
        finally:
            for q, old in zip(self._quantizers, saved):
                q.shared_offset = old

    def state_manifest(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref_low": self.ref[0].item(), "ref_high": self.ref[1].item(), "gamma": self.gamma,
                "lam": self.lam, "tau": self.tau, "allow_up": self.allow_up, "lower": self.lower.item(),
                "upper": self.upper.item()}

    @classmethod
    def from_manifest(cls, state: dict[str, Any]) -> "VideoBitController":
        return cls(state["ref_low"], state["ref_high"], state["gamma"], state["lam"], state["tau"], state["allow_up"],
                   state["lower"], state["upper"])


CONTROLLERS: dict[str, type[InputController]] = {VideoBitController.kind: VideoBitController}


def controller_from_manifest(state: dict[str, Any] | None, base: nn.Module, host: ModelHost) -> InputController | None:
    """The controller a checkpoint recorded, attached to its rebuilt base network (None when there was none)."""
    if not state:
        return None
    if state.get("kind") not in CONTROLLERS:
        raise VsrqError(f"unknown input controller {state.get('kind')!r} in the manifest")
    return CONTROLLERS[state["kind"]].from_manifest(state).attach(base, host)
