"""Block reconstruction (BRECQ, Li et al. 2021): calibrate a quantized network one unit at a time.

Units are the blocks the model's host declares (``ModelHost.blocks``: BasicVSR's and AnimeSR's
residual blocks, a UNet's input, middle and output blocks), and every quantized layer outside them
on its own (layer-wise reconstruction, as AdaRound does). In execution order, each unit's quantized
parameters are trained to reproduce the float unit's output, ``min || U_q(x) - U_fp(x_fp) ||^2``
(squared error summed over channels, averaged over the rest, as BRECQ), where ``U_fp(x_fp)`` is the
float network's unit output and ``x`` the unit's input, by ``inputs``:

- ``"quant"`` (BRECQ): its input in the network quantized so far (earlier units reconstructed), so
  later units learn to absorb the error of earlier ones;
- ``"fp"``: its input in the float network (AdaRound's layer-wise setting);
- ``"mix"`` (QDrop): each element drawn from the two with equal probability at every step.

Both sides come from ``ctx.base`` itself (float mode gives the teacher exactly, split convolutions
included), so units need no name mapping. What trains:

- every static activation range in the unit (learned step sizes, straight-through rounding);
- with ``rounding``, each weight's up/down rounding (AdaRound, :mod:`vsrq.quant.rounding`) with the
  weight grid fixed; without it, the weight ranges too (Q-Diffusion as vsrq runs it);
- with ``drop`` p (QDrop, Wei et al. 2022), each activation inside the unit skips quantization with
  probability p during training (never at inference).

Memory stays bounded: one float pass records the unit's outputs (and float inputs if needed) and
one quantized pass its inputs; a unit called more often than ``memory_mb`` holds keeps a seeded
uniform sample of its calls (the same calls in both passes). A unit whose output error on its
quantized inputs ends above where it started keeps its starting state.

Cost: two passes over the calibration data per unit, which for a recurrent network over many
frames dominates (official BasicVSR, 96 frames at 64x64: about 40 s a pass on 2 CPU cores, 67
units). ``group`` k records k consecutive units with one pair of passes (memory: up to k times
``memory_mb``); a unit's quantized inputs then carry the error of the earlier units of its group as
initialized rather than as reconstructed, an approximation recorded in the manifest. ``windows``
runs the recording passes on fewer calibration items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.memory import release_free_memory
from vsrq.methods.base import CalibContext
from vsrq.progress import progress
from vsrq.quant.layers import QuantLayer, layer_modes
from vsrq.quant.quantizer import FakeQuantizer
from vsrq.quant.rounding import beta_schedule, rounding_regularizer

INPUTS = ("quant", "fp", "mix")


@dataclass(frozen=True)
class ReconstructionConfig:
    """How each unit trains. The defaults are the learned-step-size reconstruction Q-Diffusion uses here;
    BRECQ adds ``rounding``, QDrop ``drop`` and ``inputs="mix"``."""

    iters: int = 300  # Adam steps per unit
    lr: float = 1e-3  # static quantizer ranges
    batch_size: int = 1  # calibration items per model call in the recording passes
    samples: int = 1  # recorded unit calls per Adam step
    rounding: bool = False  # AdaRound: learn each weight's rounding (weight grids then stay fixed)
    lr_round: float = 1e-3
    round_weight: float = 0.01  # lambda of the rounding regularizer
    warmup: float = 0.2  # share of the steps before the regularizer starts
    beta_start: float = 20.0
    beta_end: float = 2.0
    drop: float = 0.0  # QDrop: probability that an activation in the unit passes unquantized while training
    inputs: str = "quant"
    memory_mb: float = 256.0  # recorded calls per unit, both passes together
    group: int = 1  # units recorded by one pair of passes (> 1: see the module docstring)
    windows: int = 0  # calibration items the recording passes run, spread evenly (0: all)

    def __post_init__(self) -> None:
        ok = (self.iters >= 0 and self.lr > 0 and self.batch_size >= 1 and self.samples >= 1 and self.lr_round > 0
              and self.round_weight >= 0 and 0 <= self.warmup < 1 and self.beta_start >= self.beta_end > 0
              and 0 <= self.drop < 1 and self.inputs in INPUTS and self.memory_mb > 0 and self.group >= 1
              and self.windows >= 0)
        if not ok:
            raise VsrqError(f"block reconstruction: need iters, windows >= 0; lr, lr_round, memory_mb > 0; batch_size, "
                            f"samples, group >= 1; 0 <= warmup, drop < 1; beta_start >= beta_end > 0; inputs in "
                            f"{INPUTS}; got {self}")


def reconstruction_units(ctx: CalibContext) -> list[str]:
    """The host's blocks that hold quantized layers, then every quantized layer outside them, in module order."""
    names = list(ctx.layers)
    blocks = [b for b in ctx.host.blocks(ctx.base) if any(n.startswith(b + ".") for n in names)]
    units = blocks + [n for n in names if not any(n.startswith(b + ".") for b in blocks)]
    order = {name: i for i, (name, _) in enumerate(ctx.base.named_modules())}
    return sorted(units, key=order.__getitem__)


def unit_ranges(unit: nn.Module, weights: bool = True) -> list[nn.Parameter]:
    """The static quantizer ranges inside ``unit`` (activations; weights too unless ``weights`` is False)."""
    quantizers = [m for m in unit.modules() if isinstance(m, FakeQuantizer) and not m.spec.dynamic
                  and (weights or m.role == "act")]
    return [p for q in quantizers for p in (q.lower, q.upper) if p is not None]


def _owned(value: Any) -> Any:
    """A detached copy of every tensor in a module's call (a later in-place op must not change what was kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_owned(v) for v in value)
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class _Recorder:
    """Keeps a module's calls (inputs, output or both) over a pass: all of them while they fit in ``budget``
    bytes, else a uniform sample (reservoir sampling from ``seed``). The first call sets the capacity from
    its output and ``input_copies`` copies of its inputs (what both passes keep together). Two recorders
    with the same seed and capacity over passes with the same number of calls keep the same calls in the
    same slots."""

    def __init__(self, module: nn.Module, inputs: bool, output: bool, seed: int,
                 budget: float = 0.0, input_copies: int = 1, capacity: int | None = None) -> None:
        self.inputs, self.output = inputs, output
        self.budget, self.input_copies, self.capacity = budget, input_copies, capacity
        self.entries: list[Any] = []
        self.count = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._hook = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, _m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if self.capacity is None:
            size = _nbytes((args, kwargs)) * self.input_copies + _nbytes(out)
            self.capacity = max(1, int(self.budget // max(1, size)))
        i, self.count = self.count, self.count + 1
        if i >= self.capacity:
            i = int(torch.randint(i + 1, (1,), generator=self._generator))
            if i >= self.capacity:
                return
        entry = _owned(((args, kwargs) if self.inputs else None, out if self.output else None))
        if i == len(self.entries):
            self.entries.append(entry)
        else:
            self.entries[i] = entry

    def remove(self) -> None:
        self._hook.remove()


def recording_windows(items: int, windows: int) -> list[int] | None:
    """The calibration items the recording passes run: all (None), or ``windows`` of them spread evenly."""
    if not windows or windows >= items:
        return None
    return sorted({int(i * items / windows) for i in range(windows)})


def _record(ctx: CalibContext, recorders: list[_Recorder], cfg: ReconstructionConfig) -> None:
    try:
        with torch.no_grad():
            for call in ctx.calls(cfg.batch_size, recording_windows(len(ctx.calib), cfg.windows)):
                ctx.run(ctx.base, call)
    finally:
        for r in recorders:
            r.remove()
    release_free_memory()


def _group_calls(ctx: CalibContext, units: list[str], layers: list[QuantLayer], cfg: ReconstructionConfig
                 ) -> dict[str, tuple[list, list | None, list[torch.Tensor]]]:
    """Per unit of ``units``: (quantized-network inputs, float-network inputs or None, float outputs) of its
    recorded calls, from one float and one quantized pass for the whole group."""
    with_fp = cfg.inputs != "quant"
    seed = ctx.config.seed
    modules = [ctx.base.get_submodule(u) for u in units]
    fp = [_Recorder(m, with_fp, True, seed, cfg.memory_mb * 2**20, input_copies=2 if with_fp else 1) for m in modules]
    with layer_modes(layers, "fp"):
        _record(ctx, fp, cfg)
    q = [_Recorder(m, True, False, seed, capacity=f.capacity) for m, f in zip(modules, fp)]
    with layer_modes(layers, "quant"):
        _record(ctx, q, cfg)
    out = {}
    for unit, f, r in zip(units, fp, q):
        targets = [t for _, t in f.entries]
        if r.count != f.count or not targets or not all(isinstance(t, torch.Tensor) for t in targets):
            raise VsrqError(f"block {unit}: its float and quantized passes differ, or it returns no tensor")
        out[unit] = ([inp for inp, _ in r.entries], [inp for inp, _ in f.entries] if with_fp else None, targets)
    return out


def reconstruct(ctx: CalibContext, cfg: ReconstructionConfig = ReconstructionConfig()) -> dict[str, Any]:
    """Reconstruct every unit in turn; returns per-unit facts (output MSE on quantized inputs before and after,
    calls recorded, codes moved off round-to-nearest) for the manifest."""
    units = reconstruction_units(ctx)
    layers = list(ctx.layers.values())
    facts: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(ctx.config.seed)
    with progress(total=len(units), desc="reconstruct", unit="block", enabled=ctx.show_progress) as bar:
        for start in range(0, len(units), cfg.group):
            group = units[start : start + cfg.group]
            recorded = _group_calls(ctx, group, layers, cfg)
            for unit in group:
                inputs, fp_inputs, targets = recorded.pop(unit)
                facts[unit] = _reconstruct_unit(ctx.base.get_submodule(unit), inputs, fp_inputs, targets, cfg,
                                                generator)
                del inputs, fp_inputs, targets
                release_free_memory()
                bar.update(1)
    ctx.log(f"reconstructed {len(units)} units; output MSE {sum(f['mse_before'] for f in facts.values()):.4g} -> "
            f"{sum(f['mse_after'] for f in facts.values()):.4g} (summed over units)")
    return facts


def _reconstruct_unit(module: nn.Module, inputs: list, fp_inputs: list | None, targets: list[torch.Tensor],
                      cfg: ReconstructionConfig, generator: torch.Generator) -> dict[str, Any]:
    quant_layers = [m for m in module.modules() if isinstance(m, QuantLayer)]
    rounded = [l for l in quant_layers if cfg.rounding and l.weight_quantizer is not None
               and not l.weight_quantizer.spec.dynamic and l.weight is not None]
    ranges = unit_ranges(module, weights=not cfg.rounding)
    before = _mse(module, inputs, targets)
    start = [p.detach().clone() for p in ranges]
    variables = [l.start_learned_rounding() for l in rounded]
    if (ranges or variables) and cfg.iters:
        _train(module, ranges, variables, inputs, fp_inputs, targets, cfg, generator)
    for l in rounded:
        l.harden_rounding()
    after = _mse(module, inputs, targets)
    fact: dict[str, Any] = {"calls": len(targets), "mse_before": before}
    if after > before:  # a few noisy steps can end above the start: keep the start then
        with torch.no_grad():
            for p, s in zip(ranges, start):
                p.copy_(s)
        for l in rounded:
            l.drop_learned_rounding()
        fact.update(mse_after=before, kept_start=True)
        return fact
    nearest = [l.weight_codes()[0] for l in rounded]  # round-to-nearest codes of the float weights
    for l in rounded:
        l.bake_rounding()
    if rounded:  # AdaRound only moves a code between floor and ceiling: the share that left nearest
        changed = sum(int((l.weight_codes()[0] != n).sum()) for l, n in zip(rounded, nearest))
        fact["codes_off_nearest"] = round(changed / sum(n.numel() for n in nearest), 4)
    fact["mse_after"] = after
    return fact


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BRECQ's reconstruction error: squared difference summed over channels (dim 1), averaged over the rest."""
    d = (pred - target).pow(2)
    return d.sum(1).mean() if d.dim() > 1 else d.mean()


def _mse(module: nn.Module, inputs: list, targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(torch.nn.functional.mse_loss(module(*a, **k), t).item()
                         for (a, k), t in zip(inputs, targets)) / len(targets))


def _mixed(q: Any, fp: Any, generator: torch.Generator) -> Any:
    """QDrop's input: each element of each floating tensor from the quantized or the float network, evenly."""
    if isinstance(q, torch.Tensor) and q.is_floating_point():
        # drawn on the CPU generator whatever the device: the same seed drops the same elements everywhere
        pick = torch.rand(q.shape, generator=generator, dtype=q.dtype).to(q.device) < 0.5
        return torch.where(pick, fp, q)
    if isinstance(q, (tuple, list)):
        return type(q)(_mixed(a, b, generator) for a, b in zip(q, fp))
    if isinstance(q, dict):
        return {k: _mixed(v, fp[k], generator) for k, v in q.items()}
    return q


def _stackable(picks: list[int], inputs: list, targets: list[torch.Tensor]) -> list[list[int]]:
    """The picked calls in groups that run as one batch: calls of positional tensors only, all of one shape
    (a recurrent block's per-frame calls); any other call runs alone."""
    def key(i: int) -> tuple | None:
        args, kwargs = inputs[i]
        if kwargs or not args or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args):
            return None
        return tuple(tuple(a.shape) for a in args) + (tuple(targets[i].shape),)
    groups: dict[tuple, list[int]] = {}
    alone = []
    for i in picks:
        k = key(i)
        (alone.append([i]) if k is None else groups.setdefault(k, []).append(i))
    return list(groups.values()) + alone


def _gather(group: list[int], inputs: list, fp_inputs: list | None, targets: list[torch.Tensor], mode: str,
            generator: torch.Generator) -> tuple[tuple, dict, torch.Tensor]:
    """One batch of recorded calls: the unit's inputs (quantized, float or mixed, by ``mode``) and targets."""
    def one(i: int) -> tuple[tuple, dict]:
        if fp_inputs is None:
            return inputs[i]
        if mode == "fp":
            return fp_inputs[i]
        (args, kwargs), (fargs, fkwargs) = inputs[i], fp_inputs[i]
        return _mixed(args, fargs, generator), _mixed(kwargs, fkwargs, generator)
    if len(group) == 1:
        args, kwargs = one(group[0])
        return args, kwargs, targets[group[0]]
    calls = [one(i)[0] for i in group]
    args = tuple(torch.cat([c[j] for c in calls]) for j in range(len(calls[0])))
    return args, {}, torch.cat([targets[i] for i in group])


def _train(module: nn.Module, ranges: list[nn.Parameter], variables: list[nn.Parameter], inputs: list,
           fp_inputs: list | None, targets: list[torch.Tensor], cfg: ReconstructionConfig,
           generator: torch.Generator) -> None:
    acts = [m for m in module.modules() if isinstance(m, FakeQuantizer) and m.role == "act"]
    for p in ranges + variables:
        p.requires_grad_(True)
    groups = [g for g in ({"params": ranges, "lr": cfg.lr}, {"params": variables, "lr": cfg.lr_round}) if g["params"]]
    opt = torch.optim.Adam(groups)
    for q in acts:
        q.drop, q.drop_generator = cfg.drop, generator
    try:
        for step in range(cfg.iters):
            picks = torch.randint(len(targets), (cfg.samples,), generator=generator).tolist()
            loss = torch.zeros(())
            for group in _stackable(picks, inputs, targets):
                args, kwargs, target = _gather(group, inputs, fp_inputs, targets, cfg.inputs, generator)
                loss = loss + _loss(module(*args, **kwargs), target) * (len(group) / cfg.samples)
            beta = beta_schedule(step, cfg.iters, cfg.warmup, cfg.beta_start, cfg.beta_end) if variables else None
            if beta is not None:
                loss = loss + cfg.round_weight * sum(rounding_regularizer(v, beta) for v in variables)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for q in acts:
            q.drop, q.drop_generator = 0.0, None
        for p in ranges + variables:
            p.requires_grad_(False)
