"""Block reconstruction (BRECQ, Li et al. 2021): calibrate a quantized network one unit at a time.

Units are the blocks the model's host declares (``ModelHost.blocks``: a UNet's input, middle and
output blocks), and every quantized layer outside them on its own (layer-wise reconstruction, as
AdaRound does). In execution order, each unit's quantized parameters are trained to reproduce the
float unit's output, ``min || U_q(x_q) - U_fp(x_fp) ||^2``, where ``x_q`` is the unit's input in the
network quantized so far (earlier units already reconstructed) and ``x_fp`` its float input: the
error of earlier units is what later ones learn to absorb. Both sides come from ``ctx.base`` itself
(float mode gives the teacher exactly, split convolutions included), so units need no name mapping.

What trains here is every static quantizer range in the unit (weights per channel, activations per
tensor): the learned-step-size part of BRECQ / Q-Diffusion. Gradients pass the rounding by the
straight-through estimator. A unit whose error ends above where it started keeps its starting ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext
from vsrq.progress import progress
from vsrq.quant.layers import layer_modes
from vsrq.quant.quantizer import FakeQuantizer


@dataclass(frozen=True)
class ReconstructionConfig:
    """How long and how fast each unit trains."""

    iters: int = 300  # Adam steps per unit, each on one calibration call
    lr: float = 1e-3
    batch_size: int = 1  # calibration items per call

    def __post_init__(self) -> None:
        if self.iters < 0 or self.lr <= 0 or self.batch_size < 1:
            raise VsrqError(f"block reconstruction: need iters >= 0, lr > 0, batch_size >= 1, got {self}")


def reconstruction_units(ctx: CalibContext) -> list[str]:
    """The host's blocks that hold quantized layers, then every quantized layer outside them, in module order."""
    names = list(ctx.layers)
    blocks = [b for b in ctx.host.blocks(ctx.base) if any(n.startswith(b + ".") for n in names)]
    units = blocks + [n for n in names if not any(n.startswith(b + ".") for b in blocks)]
    order = {name: i for i, (name, _) in enumerate(ctx.base.named_modules())}
    return sorted(units, key=order.__getitem__)


def unit_ranges(unit: nn.Module) -> list[nn.Parameter]:
    """The static quantizer ranges inside ``unit``: what reconstruction trains."""
    quantizers = [m for m in unit.modules() if isinstance(m, FakeQuantizer) and not m.spec.dynamic]
    return [p for q in quantizers for p in (q.lower, q.upper) if p is not None]


class _Tap:
    """Records a module's inputs (args, kwargs) or outputs over a pass, one entry per call of the module."""

    def __init__(self, module: nn.Module, what: str) -> None:
        self.seen: list[Any] = []
        if what == "inputs":
            self._hook = module.register_forward_pre_hook(
                lambda _m, args, kwargs: self.seen.append((args, kwargs)), with_kwargs=True)
        else:
            self._hook = module.register_forward_hook(lambda _m, _args, out: self.seen.append(out))

    def remove(self) -> None:
        self._hook.remove()


def _pass(ctx: CalibContext, taps: list[_Tap], cfg: ReconstructionConfig) -> None:
    try:
        with torch.no_grad():
            for call in ctx.calls(cfg.batch_size):
                ctx.run(ctx.base, call)
    finally:
        for tap in taps:
            tap.remove()


def reconstruct(ctx: CalibContext, cfg: ReconstructionConfig = ReconstructionConfig()) -> dict[str, Any]:
    """Reconstruct every unit in turn; returns per-unit facts (output MSE before and after) for the manifest."""
    units = reconstruction_units(ctx)
    modules = {u: ctx.base.get_submodule(u) for u in units}
    layers = list(ctx.layers.values())
    with layer_modes(layers, "fp"):  # every unit's float output, in one pass
        targets = {u: _Tap(m, "outputs") for u, m in modules.items()}
        _pass(ctx, list(targets.values()), cfg)
    facts: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(ctx.config.seed)
    with progress(total=len(units), desc="reconstruct", unit="block", enabled=ctx.show_progress) as bar:
        for unit in units:
            module, wanted = modules[unit], targets[unit].seen
            with layer_modes(layers, "quant"):
                tap = _Tap(module, "inputs")
                _pass(ctx, [tap], cfg)
                inputs = tap.seen
                if len(inputs) != len(wanted) or not all(isinstance(t, torch.Tensor) for t in wanted):
                    raise VsrqError(f"block {unit}: its float and quantized passes differ, or it returns no tensor")
                before = _mse(module, inputs, wanted)
                params = unit_ranges(module)
                start = [p.detach().clone() for p in params]
                if params and cfg.iters:
                    _train(module, params, inputs, wanted, cfg, generator)
                after = _mse(module, inputs, wanted)
                if after > before:  # a few noisy steps can end above the start: keep the start then
                    with torch.no_grad():
                        for p, s in zip(params, start):
                            p.copy_(s)
                    after = before
                facts[unit] = {"mse_before": before, "mse_after": after}
            bar.update(1)
    ctx.log(f"reconstructed {len(units)} units; output MSE {sum(f['mse_before'] for f in facts.values()):.4g} -> "
            f"{sum(f['mse_after'] for f in facts.values()):.4g} (summed over units)")
    return facts


def _mse(module: nn.Module, inputs: list, targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(F.mse_loss(module(*a, **k), t).item() for (a, k), t in zip(inputs, targets)) / len(targets))


def _train(module: nn.Module, params: list[nn.Parameter], inputs: list, targets: list[torch.Tensor],
           cfg: ReconstructionConfig, generator: torch.Generator) -> None:
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for _ in range(cfg.iters):
        i = int(torch.randint(len(targets), (1,), generator=generator))
        args, kwargs = inputs[i]
        loss = F.mse_loss(module(*args, **kwargs), targets[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
