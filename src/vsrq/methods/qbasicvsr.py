"""QBasicVSR (temporal awareness adaptation quantization for recurrent VSR).

Calibration (Algorithm 1 of the paper):

1. weights: OMSE clip bounds, symmetric per output channel;
2. activations: EMA min/max per tensor from the float network;
3. FG-VBA: every calibration clip's flow-gradient complexity ``C_video`` (Eq. 9: spatial gradient
   energy S_t plus lambda times SPyNet flow magnitude and gamma-weighted flow-Jacobian consistency);
   thresholds at the p_V-th / (100-p_V)-th percentiles; at inference a video above the upper
   threshold gets b_v = +1 activation bit, one below the lower threshold -1;
4. TS-LBA: per layer, s_space (std over channels) and s_temp (unbiased std over frames) of its input
   stacked over time (Eqs. 10-11); thresholds at the p-th / (100-p)-th percentiles over layers;
   b_L = -1 when both fall below, +1 when both exceed (Eq. 12);
5. activation ranges refreshed by OMSE at each layer's b_base + b_L bits (``omse_refresh``: true,
   the paper; false, the EMA ranges stay; "auto", the default, both are fine-tuned from the same
   start and the one whose fine-tuning loss over the calibration windows ends lower is kept, at
   twice the fine-tuning time: the refresh suits some content and not other, see the README);
6. fine-tuning in three stages (weight bounds, activation bounds, bit-adaptation parameters) with
   the Charbonnier + normalized feature loss of :mod:`vsrq.methods.finetune`.

Activation bits per layer and video are b_base + b_v + b_L; weights stay at b_base. The FG-VBA
thresholds train through a tanh surrogate of the step, in units where the initial thresholds are
0 and 1. Beyond the paper, ``fab_budget`` caps the feature average bit-width of every video: +1
video bits are disabled and sum(b_L) is projected after every step so that FAB <= budget (the first
projection lowers the layers TS-LBA ranks least sensitive; no layer goes below ``min_abits``). A
per-layer rule that sets a layer's activation bits pins them: TS-LBA and the projection move only the
other layers, which pay for the pinned layers' bits under the budget (e.g. the first and last layers at
8 bits, the rest at FAB 4.0).
The "+FT" baselines (minmax+ft, percentile+ft, dbdc+ft) run stages 1-2 on their own initialization.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vsrq.config import MAX_BITS, MIN_BITS, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.memory import release_free_memory
from vsrq.methods.base import (
    CalibContext,
    InputStatistics,
    Method,
    init_weight_ranges,
    observe_activations,
    register_method,
)
from vsrq.methods.finetune import FinetuneConfig, Stage, mean_loss, run_stages
from vsrq.models.host import ModelHost
from vsrq.progress import progress
from vsrq.quant.controller import InputController, VideoBitController, video_complexity
from vsrq.quant.layers import QuantLayer, layer_modes
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.quantizer import FakeQuantizer
from vsrq.quant.swap import LayerChoice, rule_for

# --- TS-LBA: per-layer temporal/spatial sensitivity ------------------------------------------------


class LayerSensitivity(InputStatistics):
    """Accumulates s_space and s_temp of each layer's input over the calibration calls (Eqs. 10-11).

    Frames arrive one at a time, ``(clips, C, ...)``, as the host's time layout orders them. s_temp needs
    the std over frames of every element: a running mean and sum of squares per element (Welford, updated in
    place, float32) over the T frames of a call keep memory at two activations per layer; every layer of a
    recurrent model holds its pair for the whole call, so their size is this pass's peak.
    """

    dtype = torch.float32

    def __init__(self, layers: dict[str, QuantLayer], host: ModelHost) -> None:
        super().__init__(layers, host)
        self.space: dict[str, list[float]] = {n: [] for n in layers}
        self.temp: dict[str, list[float]] = {n: [] for n in layers}
        self._run: dict[str, list] = {}

    def record(self, name: str, x: torch.Tensor) -> None:
        self.space[name].append(float(x.std(dim=1).mean()))
        run = self._run.get(name)
        if run is None:
            self._run[name] = [1, x.clone(), torch.zeros_like(x)]
        else:
            run[0] += 1
            delta = x - run[1]
            run[1].add_(delta, alpha=1.0 / run[0])
            run[2].addcmul_(delta, delta, value=1.0 - 1.0 / run[0])  # delta * (x - new mean)

    def end_call(self) -> None:
        for name, (count, _mean, m2) in self._run.items():
            if count > 1:
                self.temp[name].append(float(torch.sqrt(m2 / (count - 1)).mean()))
        self._run = {}

    def result(self) -> dict[str, tuple[float, float]]:
        return {n: (float(np.mean(self.space[n])), float(np.mean(self.temp[n]))) for n in self.layers if self.temp[n]}


def assign_layer_bits(stats: dict[str, tuple[float, float]], p_space: float, p_temp: float) -> dict[str, int]:
    """b_L per layer (Eq. 12): -1 if both below their p-th percentiles, +1 if both above their (100-p)-th."""
    space = np.array([s for s, _ in stats.values()])
    temp = np.array([t for _, t in stats.values()])
    ls, us = np.percentile(space, p_space), np.percentile(space, 100 - p_space)
    lt, ut = np.percentile(temp, p_temp), np.percentile(temp, 100 - p_temp)
    bits = {}
    for name, (s, t) in stats.items():
        bits[name] = -1 if (s <= ls and t <= lt) else (1 if (s >= us and t >= ut) else 0)
    return bits


def sensitivity_rank(stats: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each layer's rank by s_space plus its rank by s_temp: low for the layers TS-LBA deems least sensitive."""
    names = list(stats)
    space = np.argsort(np.argsort([stats[n][0] for n in names], kind="stable"), kind="stable")
    temp = np.argsort(np.argsort([stats[n][1] for n in names], kind="stable"), kind="stable")
    return {n: float(s + t) for n, s, t in zip(names, space, temp)}


def project_bit_budget(offsets: list[nn.Parameter], budget_sum: float, floors: list[float],
                       priority: list[float] | None = None) -> None:
    """Make sum(round(b_L)) <= budget_sum, no b_L below its layer's floor: lower first the layers whose
    continuous b_L sits lowest relative to its rounded value (those wanted the bit least), ties (every
    layer at the start, when all b_L are integers) broken by ``priority`` (lowest first), then by position.

    Runs after each optimizer step; a lowered layer's parameter is snapped to its new integer.
    """
    values = torch.stack([p.detach() for p in offsets]).cpu() if offsets else torch.zeros(0)
    rounded = torch.round(values)
    excess = int(rounded.sum().item() - np.floor(budget_sum + 1e-9))
    ties = np.zeros(len(offsets)) if priority is None else np.asarray(priority, dtype=np.float64)
    order = [int(i) for i in np.lexsort((ties, (values - rounded).numpy()))]  # stable: then by position
    while excess > 0:
        lowered = False
        for i in order:
            if excess > 0 and rounded[i] > floors[i]:
                rounded[i] -= 1
                excess -= 1
                lowered = True
        if not lowered:
            raise VsrqError("a FAB budget this low cannot be met: every layer whose bits may move is at its lowest "
                            "(option min_abits); pin fewer activation bits (rules' abits, TARQ's edge_abits) or "
                            "raise the budget")
    for p, v, r in zip(offsets, values, rounded):
        if torch.round(v) != r:
            p.data.fill_(float(r))


# --- the methods -----------------------------------------------------------------------------------


def _specs(choice: LayerChoice, weight_obs: str, act_obs: str) -> tuple[QuantizerSpec, QuantizerSpec]:
    return (QuantizerSpec(bits=choice.wbits, symmetric=True, granularity="channel", observer=weight_obs),
            QuantizerSpec(bits=choice.abits, symmetric=False, granularity="tensor", observer=act_obs))


_FT_OPTIONS = {"epochs": 1, "batch": 2, "micro_batch": 1, "lr_weight": 1e-3, "lr_act": 1e-5, "lr_bits": 0.1,
               "lr_decay": 0.9, "lambda_skt": 0.1, "eps": 1e-6, "holdout": 0}


def _finetune_cfg(opts: dict[str, Any]) -> FinetuneConfig:
    return FinetuneConfig(epochs=int(opts["epochs"]), batch=int(opts["batch"]), micro_batch=int(opts["micro_batch"]),
                          lr_decay=float(opts["lr_decay"]), eps=float(opts["eps"]),
                          lambda_skt=float(opts["lambda_skt"]), holdout=int(opts["holdout"]))


def _check_feature_loss(opts: dict[str, Any], host: ModelHost, model: nn.Module, method: str) -> None:
    """The normalized feature loss (lambda_skt > 0) needs the host's feature blocks: never dropped silently."""
    if opts.get("finetune", True) and float(opts["lambda_skt"]) > 0 and host.feature_blocks(model) is None:
        raise VsrqError(f"{method}'s feature loss needs feature blocks and the {host.name} host declares none: "
                        "use --option lambda_skt=0")


def _feature_pattern(opts: dict[str, Any], ctx: CalibContext) -> str | None:
    return ctx.host.feature_blocks(ctx.base) if float(opts["lambda_skt"]) > 0 else None


def _observe(ctx: CalibContext, sensitivity: LayerSensitivity | None) -> None:
    """The float pass that feeds every activation observer (and, if given, the TS-LBA statistics)."""
    calls = list(ctx.calls())
    with layer_modes(ctx.layers.values(), "observe"), torch.no_grad(), \
            progress(total=len(calls), desc="observe", unit="batch", enabled=ctx.show_progress) as bar:
        for call in calls:
            if sensitivity is not None:
                sensitivity.clips = call.size
            ctx.run(ctx.base, call)
            if sensitivity is not None:
                sensitivity.end_call()
            release_free_memory()
            bar.update(1)


def _activation_ranges(acts: dict[str, FakeQuantizer], refresh: bool | str
                       ) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Candidate activation ranges at each layer's own bits: "omse" (the refresh, from the EMA range)
    and/or "ema" (the EMA min/max itself), as ``omse_refresh`` asks; releases the observers."""
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, q in acts.items():
        bits = q.layer_bits()
        q.finish_observation(bits)  # the observer's own range: OMSE from EMA, or EMA when the refresh is off
        own = (q.lower.detach().clone(), q.upper.detach().clone())
        out.setdefault("ema" if refresh is False else "omse", {})[name] = own
        if refresh == "auto":
            out.setdefault("ema", {})[name] = q.observer.start_range(bits, q.spec.symmetric)
        q.release_observer()
    return out


def _range_stages(ctx: CalibContext, opts: dict[str, Any]) -> list[Stage]:
    weights = [l.weight_quantizer.upper for l in ctx.layers.values() if l.weight_quantizer is not None]
    acts = [p for l in ctx.layers.values() if l.input_quantizer is not None
            for p in (l.input_quantizer.lower, l.input_quantizer.upper)]
    return [Stage("weight-bounds", weights, float(opts["lr_weight"])),
            Stage("act-bounds", acts, float(opts["lr_act"]))]


@register_method
class QBasicVSR(Method):
    name = "qbasicvsr"
    description = "QBasicVSR: FG-VBA video bits + TS-LBA layer bits, OMSE/EMA calibration, 3-stage fine-tuning"
    default_options = {
        "fg_vba": True, "ts_lba": True, "finetune": True, **_FT_OPTIONS,
        "gamma": 200.0, "lambda_video": 10.0, "p_video": 10.0, "p_space": 30.0, "p_temp": 30.0, "tau": 0.1,
        "fab_budget": None, "min_abits": MIN_BITS, "omse_refresh": "auto",
    }

    def __init__(self, config: QuantConfig) -> None:
        super().__init__(config)
        if self.options["omse_refresh"] not in (True, False, "auto"):
            raise VsrqError(f"option omse_refresh must be true, false or auto, got {self.options['omse_refresh']!r}")
        if self.options["min_abits"] not in range(MIN_BITS, MAX_BITS + 1):
            raise VsrqError(f"option min_abits must be an integer {MIN_BITS}..{MAX_BITS}, got {self.options['min_abits']!r}")

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec, QuantizerSpec]:
        return _specs(choice, "omse", "ema" if self.options["omse_refresh"] is False else "ema_omse")

    def check_host(self, host: ModelHost, model: nn.Module) -> None:
        if self.options["fg_vba"] and not host.has_motion:
            raise VsrqError(f"qbasicvsr's per-video bits (FG-VBA) need a motion source and the {host.name} host "
                            "declares none: use --option fg_vba=false")
        _check_feature_loss(self.options, host, model, self.name)

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        return VideoBitController(0.0, 1.0) if self.options["fg_vba"] else None

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        o = self.options
        budget = o["fab_budget"]
        init_weight_ranges(ctx.layers)
        controller = self._fg_vba(ctx, budget is None) if o["fg_vba"] else None
        sensitivity = LayerSensitivity(ctx.layers, ctx.host) if o["ts_lba"] else None
        if sensitivity is not None:
            with sensitivity:
                _observe(ctx, sensitivity)
        else:
            _observe(ctx, None)
        acts = {n: l.input_quantizer for n, l in ctx.layers.items() if l.input_quantizer is not None}
        # a rule that sets a layer's activation bits pins them: TS-LBA and the budget move only the others
        movable = [n for n in acts if (rule := rule_for(n, self.config.rules)) is None or rule.abits is None]
        layer_bits, priority = {n: 0 for n in movable}, None
        if sensitivity is not None:
            stats = {n: v for n, v in sensitivity.result().items() if n in layer_bits}
            if stats:
                layer_bits.update(assign_layer_bits(stats, o["p_space"], o["p_temp"]))
                rank = sensitivity_rank(stats)
                priority = [rank.get(n, 0.0) for n in movable]
        offsets = []
        for name in movable:
            q = acts[name]
            q.bit_offset = nn.Parameter(torch.tensor(float(layer_bits[name]), device=ctx.device), requires_grad=False)
            offsets.append(q.bit_offset)
        budget_sum = None
        if budget is not None:
            budget_sum = float(budget) * len(acts) - sum(q.bits for q in acts.values())
            floors = [min(0, int(o["min_abits"]) - acts[n].bits) for n in movable]
            project_bit_budget(offsets, budget_sum, floors, priority)
        candidates = _activation_ranges(acts, o["omse_refresh"])
        ctx.notes["layer_bits_init"] = {str(k): int(v) for k, v in zip(*np.unique(list(layer_bits.values()), return_counts=True))}
        student = QuantizedModel(ctx.base, {}, ctx.host, controller)
        stages = []
        if o["finetune"]:
            stages = _range_stages(ctx, o)
            bit_params = (offsets if o["ts_lba"] else []) + ([controller.lower, controller.upper] if controller else [])
            if bit_params:
                project = ((lambda: project_bit_budget(offsets, budget_sum, floors, priority))
                           if budget_sum is not None else None)
                stages.append(Stage("bit-adaptation", bit_params, float(o["lr_bits"]), project))
        self._finetune_each(ctx, student, acts, candidates, stages)
        final = [acts[n].layer_bits() - acts[n].bits for n in movable]
        for q in acts.values():  # b_L is fixed after calibration: fold it into the layer's bits
            q.bits = q.layer_bits()
            q.bit_offset = None
            q.shared_offset = None
        ctx.notes["layer_bits"] = {str(k): int(v) for k, v in zip(*np.unique(final, return_counts=True))}
        if len(movable) < len(acts):
            pinned = [q.bits for n, q in acts.items() if n not in layer_bits]
            ctx.notes["pinned_abits"] = {str(k): int(v) for k, v in zip(*np.unique(pinned, return_counts=True))}
        if controller is not None:
            ctx.notes["video_thresholds"] = controller.state_manifest()
        if budget is not None:
            ctx.notes["fab_budget"] = float(budget)
        return controller

    def _finetune_each(self, ctx: CalibContext, student: QuantizedModel, acts: dict[str, FakeQuantizer],
                       candidates: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]], stages: list[Stage]) -> None:
        """Fine-tune from each candidate set of activation ranges; with more than one, keep the one whose
        loss over every calibration window ends lowest (every other tensor starts from the same state)."""
        cfg, feature_pattern = _finetune_cfg(self.options), _feature_pattern(self.options, ctx)
        if len(candidates) == 1:  # the observers already installed this one
            logs = run_stages(ctx, student, stages, cfg, feature_pattern)
        else:
            start = {k: v.clone() for k, v in student.state_dict().items()}
            outcomes = {}
            for label, ranges in candidates.items():
                student.load_state_dict(start)
                for name, (lower, upper) in ranges.items():
                    acts[name].set_range(lower, upper)
                logs = run_stages(ctx, student, stages, cfg, feature_pattern)
                loss = mean_loss(ctx, student, list(ctx.calls(cfg.micro_batch)), cfg, feature_pattern)
                ctx.log(f"activation ranges {label}: calibration loss {loss:.4g}")
                outcomes[label] = (loss, logs, {k: v.clone() for k, v in student.state_dict().items()})
            chosen = min(outcomes, key=lambda k: outcomes[k][0])
            _, logs, state = outcomes[chosen]
            student.load_state_dict(state)
            ctx.notes["omse_refresh"] = {"chosen": chosen, **{f"loss_{k}": v[0] for k, v in outcomes.items()}}
        if logs:
            ctx.notes["stages"] = [log.to_dict() for log in logs]

    def _fg_vba(self, ctx: CalibContext, allow_up: bool) -> VideoBitController:
        o = self.options
        values = []
        with torch.no_grad():
            for call in ctx.calls():
                motion = ctx.host.motion(ctx.fp_model, call)
                values.extend(video_complexity(motion.frames, motion.flows, o["gamma"], o["lambda_video"]).tolist())
                release_free_memory()
        low, high = np.percentile(values, o["p_video"]), np.percentile(values, 100 - o["p_video"])
        ctx.notes["calib_complexity"] = [round(v, 3) for v in values]
        controller = VideoBitController(float(low), float(high), o["gamma"], o["lambda_video"], o["tau"], allow_up)
        return controller.to(ctx.device).attach(ctx.base, ctx.host)


class _FinetunedStatic(Method):
    """A static baseline's initialization followed by QBasicVSR's stages 1-2 (weight, activation bounds)."""

    weight_observer = "minmax"
    act_observer = "minmax"
    default_options = dict(_FT_OPTIONS)

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec, QuantizerSpec]:
        return _specs(choice, self.weight_observer, self.act_observer)

    def check_host(self, host: ModelHost, model: nn.Module) -> None:
        _check_feature_loss(self.options, host, model, self.name)

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        init_weight_ranges(ctx.layers)
        observe_activations(ctx)
        logs = run_stages(ctx, ctx.base, _range_stages(ctx, self.options), _finetune_cfg(self.options),
                          _feature_pattern(self.options, ctx))
        ctx.notes["stages"] = [log.to_dict() for log in logs]
        return None


for _name, _w, _a in (("minmax", "minmax", "minmax"), ("percentile", "minmax", "percentile"), ("dbdc", "minmax", "dbdc")):
    register_method(type(f"FT_{_name}", (_FinetunedStatic,), {
        "name": f"{_name}+ft", "weight_observer": _w, "act_observer": _a,
        "description": f"{_name} initialization + QBasicVSR fine-tuning of weight and activation bounds"}))
