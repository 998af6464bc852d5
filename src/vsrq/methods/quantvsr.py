"""QuantVSR (Chai et al., AAAI 2026) and the baselines it is compared with, for any model.

The layer (paper Eq. 3): ``y = X L1 L2 + Q_A(X H) Q_W(H^T R) + A_bias`` with ``R = W - L1 L2``:
a full-precision low-rank branch, a randomized-Hadamard-rotated low-bit branch, and a learnable
bias. Weights are quantized per output channel (symmetric; ranges follow R while it trains and are
fixed at the end), activations per tensor, asymmetric, with dynamic ranges (per token optional:
everywhere, or in the layers that module-name globs select).

Calibration, in the paper's three stages:

1. STCA rank allocation: for each layer and calibration input (one clip's frames), the temporal
   complexity C_t (Eq. 4, mean inter-frame difference energy) and spatial complexity C_s (Eq. 5,
   mean spatial std per channel and frame); thresholds at the 25th / 75th percentiles of all
   values; from r_min = 16 every input with both above the upper thresholds adds ``rank_step``,
   every input with both below the lower ones removes it; clamped to [16, 64] and to half the
   smaller weight dimension (a rank near full would leave nothing to quantize; layers too narrow
   for 8 get no branch), rounded to a multiple of 8;
2. SVD initialization of L1, L2 (randomized low-rank SVD for large matrices), then dual-branch
   refinement: L1, L2 trained on the MSE between float and quantized model outputs;
3. LBA: only A_bias trained, same loss; then folded into the bias (no inference cost).

Training follows the paper's schedule scaled to the calibration set: 2 epochs over the clips,
learning rate 1e-3 then 2e-4, Adam, batch 2.

Option ``act_clip`` (all three methods; off by default, as in the papers): after the branch is built,
each layer's dynamic activation range [min, max] is scaled by a clip ratio from 1.00 down to 0.35
(or the floor ``act_clip`` gives), the one with the least squared layer-output error on the
calibration data (every second step of a recurrent model judged). Activations stay one range per tensor;
only the range's width changes.

Baselines: ``quarot`` (rotation + round-to-nearest, no branch, no training), ``svdquant``
(SmoothQuant smoothing with alpha 0.5 + a fixed rank-32 SVD branch, no refinement) and ``viditq``
(smoothing + rotation + per-token activations, no branch; its per-token default aside), with the same
weight/activation granularity as ``quantvsr`` so the table compares methods, not granularities.
QuantVSR's Table 1 ablations are options: ``branch`` ("none" | "svd" | "stca") and ``lba``. Option
``ts_lba`` (ours) adds QBasicVSR's per-layer activation bits to QuantVSR's layer: the two methods combined.
Option ``smooth`` (ours; an alpha, e.g. 0.5) puts SVDQuant's SmoothQuant smoothing before the rotation and the
branch: on a member where smoothing, not rotation, tames the activations, it tests whether that is what QuantVSR
lacks there.
``refine`` (default: only the STCA branch, as in the paper) can also refine a uniform-rank SVD
branch, which separates STCA's rank allocation from its refinement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vsrq.config import MAX_BITS, MIN_BITS, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext, InputStatistics, Method, register_method, run_model
from vsrq.methods.finetune import FinetuneConfig, Stage, run_stages
from vsrq.methods.qbasicvsr import LayerSensitivity, assign_layer_bits
from vsrq.models.host import RECURRENT, ModelHost
from vsrq.quant.controller import InputController
from vsrq.quant.equalize import migration_scale
from vsrq.quant.layers import QuantLayer, layer_modes
from vsrq.quant.swap import LayerChoice, covers

SVD_FULL_LIMIT = 1 << 20  # matrices larger than this many entries use a randomized low-rank SVD
CLIP_FLOOR = 0.35  # the smallest activation clip ratio searched unless option act_clip names another


def clip_grid(floor: float = CLIP_FLOOR) -> tuple[float, ...]:
    """Clip ratios 1.00, 0.95, ... down to ``floor``."""
    if not 0.0 < floor <= 1.0:
        raise VsrqError(f"option act_clip must be true, false or a smallest clip ratio in (0, 1], got {floor}")
    return tuple(round(1.0 - 0.05 * i, 2) for i in range(round((1.0 - floor) / 0.05) + 1))


CLIP_GRID = clip_grid()
CLIP_EVERY = 2  # the clip search judges every 2nd call of each layer


def svd_lowrank_factors(w: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, L2) with L1 L2 the best rank-``rank`` approximation of ``w`` (m x n); singular values split evenly."""
    w = w.detach().double()
    if w.numel() > SVD_FULL_LIMIT:
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(w, q=min(rank + 8, min(w.shape)), niter=4)
        vh = v.T
    else:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


def max_rank(layer: QuantLayer, r_max: int) -> int:
    """Half the smaller dimension of the layer's weight matrix, capped at r_max, a multiple of 8 (0: no branch)."""
    m, n = layer.weight_matrix().shape
    return min(r_max, (min(m, n) // 2) // 8 * 8)


class ComplexityStats(InputStatistics):
    """Per layer and per calibration input (each clip of a call): C_t (Eq. 4) and C_s (Eq. 5).

    Frames arrive in temporal order as the host's time layout gives them, so C_t compares successive
    frames of one clip whether the model runs them one call per step or all in one call.
    """

    def __init__(self, layers: dict[str, QuantLayer], host: ModelHost) -> None:
        super().__init__(layers, host)
        self.values: dict[str, list[tuple[float, float]]] = {n: [] for n in layers}
        self._run: dict[str, list] = {}

    def record(self, name: str, x: torch.Tensor) -> None:
        # x (clips, C, ...): one frame of every clip; a frame with one position at most spreads over its channels
        spread = x.flatten(2) if x.dim() > 2 and x.shape[2:].numel() > 1 else x.reshape(x.shape[0], 1, -1)
        spatial = spread.std(dim=2).mean(dim=1)  # per clip: mean over channels of the spatial std
        run = self._run.get(name)
        if run is None:
            self._run[name] = [x, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device), spatial.clone(), 1]
        else:
            diff = (x - run[0]).pow(2).flatten(1).mean(dim=1)  # ||X_t+1 - X_t||^2 / CHW per clip
            run[0], run[1], run[2], run[3] = x, run[1] + diff, run[2] + spatial, run[3] + 1

    def end_call(self) -> None:
        for name, (_, diff_sum, spatial_sum, count) in self._run.items():
            if count > 1:
                for ct, cs in zip((diff_sum / (count - 1)).tolist(), (spatial_sum / count).tolist()):
                    self.values[name].append((ct, cs))
        self._run = {}


class ClipSearch(InputStatistics):
    """Per layer: the squared output error of the quantized layer at each activation clip ratio, on float inputs.

    The error is measured on what the layer passes on (rotation and branch included), not on how well its
    input is reproduced: a clipped outlier matters only as much as the weights it meets.
    """

    dtype = None  # the layer's own input: no float64 copy, even of the calls not judged
    per_frame = False  # the output error is judged on whole calls

    def __init__(self, layers: dict[str, QuantLayer], host: ModelHost, grid: tuple[float, ...] = CLIP_GRID,
                 every: int = 1) -> None:
        super().__init__({n: layer for n, layer in layers.items() if layer.input_quantizer is not None}, host)
        self.grid = grid
        # judge one call in ``every`` per layer and batch, the last of each group (recurrent steps are alike;
        # the first step, whose hidden state is still zero, is never among them unless every == 1)
        self.every = every
        self.errors = {n: torch.zeros(len(grid), dtype=torch.float64) for n in self.layers}
        self.calls = dict.fromkeys(self.layers, 0)

    def record(self, name: str, x: torch.Tensor) -> None:
        self.calls[name] += 1
        if self.calls[name] % self.every:
            return
        layer = self.layers[name]
        target = layer.forward(x)  # the layer is in mode "fp" during the pass: its float output
        with layer_modes([layer], "quant"):
            for i, ratio in enumerate(self.grid):
                layer.input_quantizer.set_clip_ratio(ratio)
                self.errors[name][i] += (layer.forward(x) - target).double().pow(2).sum().cpu()

    def end_call(self) -> None:
        self.calls = dict.fromkeys(self.layers, 0)

    def best(self) -> dict[str, float]:
        """The ratio with the least error per layer (1.0, no clip, is in the grid: never worse on these inputs)."""
        return {n: self.grid[int(e.argmin())] for n, e in self.errors.items()}


def allocate_ranks(values: dict[str, list[tuple[float, float]]], caps: dict[str, int], r_min: int = 16,
                   r_max: int = 64, low_pct: float = 25, high_pct: float = 75, step: int = 1) -> dict[str, int]:
    """STCA's rank walk: thresholds over every (layer, input) pair, then +/- step per input, clamped, multiple of 8."""
    all_ct = np.array([ct for v in values.values() for ct, _ in v])
    all_cs = np.array([cs for v in values.values() for _, cs in v])
    lt, ut = np.percentile(all_ct, low_pct), np.percentile(all_ct, high_pct)
    ls, us = np.percentile(all_cs, low_pct), np.percentile(all_cs, high_pct)
    ranks = {}
    for name, pairs in values.items():
        r = r_min
        for ct, cs in pairs:
            if ct > ut and cs > us:
                r += step
            elif ct < lt and cs < ls:
                r -= step
            r = min(max(r, r_min), r_max)
        r = int(round(r / 8.0)) * 8
        ranks[name] = min(r, caps[name])
    return ranks


def _weight_spec(choice: LayerChoice) -> QuantizerSpec:
    # dynamic while R = W - L1 L2 trains; fixed to static per-channel ranges when calibration ends
    return QuantizerSpec(bits=choice.wbits, symmetric=True, granularity="channel", dynamic=True)


def _act_spec(choice: LayerChoice, per_token: bool) -> QuantizerSpec:
    return QuantizerSpec(bits=choice.abits, symmetric=False, granularity="token" if per_token else "tensor", dynamic=True)


def _freeze_weight_ranges(ctx: CalibContext) -> None:
    for layer in ctx.layers.values():
        if layer.weight_quantizer is not None:
            layer.weight_quantizer.freeze_range(layer.residual_weight())


class _LowRankMethod(Method):
    """Shared by quantvsr, svdquant and quarot: rotation/smoothing, an optional branch, optional training.

    Option ``per_token``: true for per-token activations everywhere, or module-name globs for per-token
    activations only in the layers they cover (where one range per tensor costs the most), per tensor elsewhere.
    """

    def __init__(self, config: QuantConfig) -> None:
        super().__init__(config)
        per_token = self.options["per_token"]
        if isinstance(per_token, bool):
            self.token_globs: tuple[str, ...] = ("*",) if per_token else ()
        elif isinstance(per_token, (list, tuple)) and all(isinstance(g, str) for g in per_token):
            self.token_globs = tuple(per_token)
        else:
            raise VsrqError(f"option per_token must be true, false or a list of module-name globs, got {per_token!r}")
        act_clip = self.options["act_clip"]
        if not isinstance(act_clip, (bool, int, float)):
            raise VsrqError(f"option act_clip must be true, false or a smallest clip ratio, got {act_clip!r}")
        # the clip ratios to search (None: no search); a floor outside (0, 1] is refused here, before calibration
        self.clip_ratios: tuple[float, ...] | None = (
            None if act_clip is False else clip_grid() if act_clip is True else clip_grid(float(act_clip)))

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec, QuantizerSpec]:
        return _weight_spec(choice), _act_spec(choice, any(covers(g, choice.name) for g in self.token_globs))

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        unmatched = [g for g in self.token_globs if not any(covers(g, name) for name in ctx.layers)]
        if unmatched:
            raise VsrqError(f"per_token pattern(s) {', '.join(map(repr, unmatched))} cover no quantized layer")
        return self.calibrate_layers(ctx)

    def calibrate_layers(self, ctx: CalibContext) -> InputController | None:
        raise NotImplementedError

    def search_clip(self, ctx: CalibContext) -> None:
        """Option ``act_clip`` (true, or the smallest ratio to try): one activation clip ratio per layer, the one
        with the least output error."""
        if self.clip_ratios is None:
            return
        # a recurrent model's steps are alike: judge every CLIP_EVERY-th (never the zero-state first step), unless
        # clips are shorter than that; a model that batches its frames sees a new input in every call
        recurrent = ctx.host.time_layout == RECURRENT and ctx.calib.shortest >= CLIP_EVERY
        search = ClipSearch(ctx.layers, ctx.host, self.clip_ratios, every=CLIP_EVERY if recurrent else 1)
        search.run(ctx)
        ratios = search.best()
        for name, ratio in ratios.items():
            ctx.layers[name].input_quantizer.set_clip_ratio(ratio)
        ctx.notes["act_clip"] = ratios
        ctx.log(f"activation clip ratios: mean {np.mean(list(ratios.values())):.3f}, "
                f"min {min(ratios.values()):.2f} ({min(ratios, key=ratios.get)})")

    def add_rotations(self, layers: dict[str, QuantLayer]) -> None:
        for i, layer in enumerate(layers.values()):
            layer.add_rotation(seed=self.config.seed * 100003 + i)

    def shape_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int], smooth: bool, rotate: bool,
                        bias: bool) -> None:
        """The tensors calibration adds, with placeholder values, in the order calibration adds them."""
        if smooth:
            for layer in layers.values():
                layer.add_smoothing(torch.ones(layer.in_channels, device=layer.weight.device))
        if rotate:
            self.add_rotations(layers)
        for name, layer in layers.items():
            if ranks.get(name, 0) > 0:
                m, n = layer.weight_matrix().shape
                layer.add_lowrank(torch.zeros(m, ranks[name], device=layer.weight.device),
                                  torch.zeros(ranks[name], n, device=layer.weight.device))
            if bias:
                layer.add_bias_alignment()
                layer.fold_bias_alignment()

    def add_branches(self, ctx: CalibContext, ranks: dict[str, int]) -> None:
        for name, layer in ctx.layers.items():
            if ranks.get(name, 0) > 0:
                up, down = svd_lowrank_factors(layer.weight_matrix(), ranks[name], self.config.seed)
                layer.add_lowrank(up, down)
        ctx.notes["ranks"] = {n: layer.rank for n, layer in ctx.layers.items()}
        branch = [layer.rank for layer in ctx.layers.values()]
        ctx.notes["average_rank"] = float(np.mean(branch)) if branch else 0.0
        values, counts = np.unique(branch, return_counts=True)
        ctx.notes["rank_histogram"] = {str(int(v)): int(c) for v, c in zip(values, counts)}


@register_method
class QuantVSR(_LowRankMethod):
    name = "quantvsr"
    description = "QuantVSR: STCA-ranked FP low-rank branch + Hadamard-rotated low-bit branch + learnable bias alignment"
    default_options: dict[str, Any] = {
        "branch": "stca", "lba": True, "rotation": True, "per_token": False, "r_min": 16, "r_max": 64,
        "fixed_rank": 32, "refine": None, "rank_step": 1, "low_pct": 25.0, "high_pct": 75.0,
        "epochs": 2, "batch": 2, "lr": 1e-3, "lr_decay": 0.2, "holdout": 0, "act_clip": False,
        "ts_lba": False, "p_space": 30.0, "p_temp": 30.0, "smooth": False,
    }

    def __init__(self, config: QuantConfig) -> None:
        super().__init__(config)
        smooth = self.options["smooth"]
        if smooth is not False and not (isinstance(smooth, (int, float)) and smooth is not True and 0.0 < smooth <= 1.0):
            raise VsrqError(f"option smooth must be false or a SmoothQuant alpha in (0, 1], got {smooth!r}")

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        o = self.options
        self.shape_structure(layers, ranks if o["branch"] != "none" else {}, o["smooth"] is not False,
                             bool(o["rotation"]), bool(o["lba"]))
        return None

    def layer_bits(self, ctx: CalibContext) -> None:
        """Option ``ts_lba`` (ours, the cross direction): QBasicVSR's temporal-shared layer bits on this layer,
        b_L in {-1, 0, +1} activation bits per layer from s_space and s_temp of its float input (Eqs. 10-12),
        read on the host's time axis; fixed, not trained."""
        stats = LayerSensitivity(ctx.layers, ctx.host)
        stats.run(ctx)
        offsets = assign_layer_bits(stats.result(), float(self.options["p_space"]), float(self.options["p_temp"]))
        for name, b in offsets.items():
            q = ctx.layers[name].input_quantizer
            if q is not None:
                q.bits = min(MAX_BITS, max(MIN_BITS, q.bits + b))
        values, counts = np.unique(list(offsets.values()), return_counts=True)
        ctx.notes["layer_bits"] = {str(int(v)): int(c) for v, c in zip(values, counts)}

    def check_ranks(self, caps: dict[str, int]) -> None:
        """Ranks are capped per layer (half its smaller weight dimension, a multiple of 8); a requested rank that no
        quantized layer can hold is a mistake, not a cap."""
        o = self.options
        if not 1 <= int(o["r_min"]) <= int(o["r_max"]):
            raise VsrqError(f"need 1 <= r_min <= r_max, got r_min={o['r_min']} and r_max={o['r_max']}")
        largest = max(caps.values(), default=0)
        wanted = {"svd": ("fixed_rank", int(o["fixed_rank"])), "stca": ("r_min", int(o["r_min"]))}.get(o["branch"])
        if wanted and wanted[1] > largest:
            raise VsrqError(f"{wanted[0]}={wanted[1]} is larger than any quantized layer allows (at most {largest}: half "
                            "the smaller weight dimension, a multiple of 8, capped at r_max)")

    @staticmethod
    def refines(options: dict[str, Any]) -> bool:
        """Whether the recipe refines a branch: by default only STCA's (the paper), else as ``refine`` says."""
        if options["branch"] == "none":
            return False
        return options["branch"] == "stca" if options["refine"] is None else bool(options["refine"])

    def calibrate_layers(self, ctx: CalibContext) -> InputController | None:
        o = self.options
        if o["branch"] not in ("none", "svd", "stca"):
            raise VsrqError(f"option branch must be none, svd or stca, got {o['branch']!r}")
        if o["ts_lba"]:
            self.layer_bits(ctx)
        if o["smooth"] is not False:
            smooth_channels(ctx, float(o["smooth"]))
        if o["rotation"]:
            self.add_rotations(ctx.layers)
        caps = {n: max_rank(layer, int(o["r_max"])) for n, layer in ctx.layers.items()}
        self.check_ranks(caps)
        if o["branch"] == "stca":
            stats = ComplexityStats(ctx.layers, ctx.host)
            stats.run(ctx)
            ranks = allocate_ranks(stats.values, caps, int(o["r_min"]), int(o["r_max"]), o["low_pct"], o["high_pct"],
                                   int(o["rank_step"]))
        elif o["branch"] == "svd":
            ranks = {n: min(int(o["fixed_rank"]), caps[n]) for n in ctx.layers}
        else:
            ranks = {}
        self.add_branches(ctx, ranks)
        self.search_clip(ctx)
        cfg = FinetuneConfig(epochs=int(o["epochs"]), batch=int(o["batch"]), lr_decay=float(o["lr_decay"]), loss="mse",
                             holdout=int(o["holdout"]))
        stages = []
        if self.refines(o):  # dual-branch refinement
            stages.append(Stage("dual-branch", [p for l in ctx.layers.values() if l.rank
                                                for p in (l.lowrank_up, l.lowrank_down)], float(o["lr"])))
        if o["lba"]:
            for layer in ctx.layers.values():
                layer.add_bias_alignment()
            stages.append(Stage("bias-alignment", [l.bias_align for l in ctx.layers.values()], float(o["lr"])))
        if stages:
            logs = run_stages(ctx, ctx.base, stages, cfg, None)
            ctx.notes["stages"] = [log.to_dict() for log in logs]
        for layer in ctx.layers.values():
            layer.fold_bias_alignment()
        _freeze_weight_ranges(ctx)
        return None


@register_method
class QuaRot(_LowRankMethod):
    name = "quarot"
    description = "QuaRot: randomized Hadamard rotation + round-to-nearest, no branch, no training"
    default_options = {"per_token": False, "act_clip": False}

    def calibrate_layers(self, ctx: CalibContext) -> InputController | None:
        self.add_rotations(ctx.layers)
        self.search_clip(ctx)
        _freeze_weight_ranges(ctx)
        return None

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        self.shape_structure(layers, {}, smooth=False, rotate=True, bias=False)
        return None


@register_method
class SVDQuant(_LowRankMethod):
    name = "svdquant"
    description = "SVDQuant: SmoothQuant smoothing (alpha 0.5) + fixed rank-32 SVD branch, no refinement"
    default_options = {"per_token": False, "rank": 32, "alpha": 0.5, "act_clip": False}

    def calibrate_layers(self, ctx: CalibContext) -> InputController | None:
        smooth_channels(ctx, float(self.options["alpha"]))
        self.add_branches(ctx, {n: min(int(self.options["rank"]), max_rank(l, 64)) for n, l in ctx.layers.items()})
        self.search_clip(ctx)
        _freeze_weight_ranges(ctx)
        return None

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        self.shape_structure(layers, ranks, smooth=True, rotate=False, bias=False)
        return None


@register_method
class ViDiTQ(_LowRankMethod):
    """ViDiT-Q's quantizer as QuantVSR compares with it, simplified to its two balancing steps: static channel
    balancing (SmoothQuant scales, fixed after calibration) and dynamic balancing (a randomized Hadamard
    rotation, which spreads the channel outliers that move with the timestep), with per-token dynamic
    activations; no branch, no training. Its metric-decoupled mixed precision is left out."""

    name = "viditq"
    description = "ViDiT-Q (simplified): static channel balancing + Hadamard rotation + per-token activations"
    default_options = {"per_token": True, "alpha": 0.5, "act_clip": False}

    def calibrate_layers(self, ctx: CalibContext) -> InputController | None:
        smooth_channels(ctx, float(self.options["alpha"]))
        self.add_rotations(ctx.layers)
        self.search_clip(ctx)
        _freeze_weight_ranges(ctx)
        return None

    def add_structure(self, layers: dict[str, QuantLayer], ranks: dict[str, int]) -> InputController | None:
        self.shape_structure(layers, {}, smooth=True, rotate=True, bias=False)
        return None


def smooth_channels(ctx: CalibContext, alpha: float) -> None:
    """SmoothQuant: per input channel s = max|X|^alpha / max|W|^(1-alpha) (clamped to [1e-2, 1e2]), from the
    float inputs' absolute maxima over the calibration data; inputs divided by s, weights multiplied."""
    absmax = _input_absmax(ctx)
    for name, layer in ctx.layers.items():
        w = layer.weight.detach().movedim(layer.in_axis, 0).reshape(layer.in_channels, -1).abs().amax(dim=1)
        layer.add_smoothing(migration_scale(absmax[name], w, alpha).clamp(1e-2, 1e2))


def _input_absmax(ctx: CalibContext) -> dict[str, torch.Tensor]:
    """Per layer, the largest |input| of each input channel over a float pass."""
    absmax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in ctx.layers.items():
        def hook(module: QuantLayer, inputs: tuple, name: str = name) -> None:
            x = inputs[0].detach().abs().movedim(module.act_axis, 0)
            m = x.reshape(x.shape[0], -1).amax(dim=1)
            absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with layer_modes(ctx.layers.values(), "fp"):
            run_model(ctx, ctx.base, "smooth")
    finally:
        for h in hooks:
            h.remove()
    return absmax
