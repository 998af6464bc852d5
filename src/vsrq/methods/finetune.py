"""The shared reconstruction loop: the float model supervises the quantized one on unlabeled clips.

Losses (QBasicVSR, Eqs. 14-16): a per-frame Charbonnier distance between the float and quantized
outputs, ``mean_t sqrt(||P(I_t) - Q(I_t)||^2 + eps^2)``, plus ``lambda_skt`` times the normalized
feature loss, ``mean_{t,k} || F_P/||F_P|| - F_Q/||F_Q|| ||^2`` over every feature block k and frame t.
Training runs in stages; each stage trains only its own parameters (Adam, learning rate decayed by
``lr_decay`` per epoch) and leaves every other tensor bit-identical.

With ``holdout = k``, k calibration windows spread evenly over the set are kept out of training
and judge each stage: a stage whose loss on them rises is undone (its parameters restored), since
on a dozen small windows a stage can fit the crops and lose on real frames.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.memory import release_free_memory
from vsrq.methods.base import CalibContext
from vsrq.models.host import ModelCall
from vsrq.progress import progress


def charbonnier_frames(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean over batch and frames of sqrt(||pred_t - target_t||_2^2 + eps^2), tensors (B, T, C, H, W)."""
    sq = (pred - target).flatten(2).pow(2).sum(dim=-1)
    return torch.sqrt(sq + eps**2).mean()


@contextmanager
def feature_tap(model: nn.Module, pattern: str) -> Iterator[list[torch.Tensor]]:
    """Collect, in call order, copies of the outputs of every module whose name matches ``pattern`` (a regex):
    owned, so :func:`feature_terms` may overwrite them even where a block returns a view of its input."""
    feats: list[torch.Tensor] = []
    regex = re.compile(pattern)
    hooks = [m.register_forward_hook(lambda _m, _i, out: feats.append(out.detach().clone()))
             for name, m in model.named_modules() if regex.search(name)]
    if not hooks:
        raise ValueError(f"feature pattern {pattern!r} matches no module")
    try:
        yield feats
    finally:
        for h in hooks:
            h.remove()


class _FeatureTerm(torch.autograd.Function):
    """Identity on a block's output ``g`` that also returns this map's normalized feature loss against the float
    map's unit rows ``f_hat``. The gradient with respect to ``g`` is computed in forward, into ``f_hat``'s own
    buffer: the block's output is never saved for backward (in a checkpointed recurrent step it is recomputed
    like everything else), so each tapped map costs one map-sized tensor from the float pass to backward."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rows = g.detach().flatten(1)
        norm = rows.norm(dim=1, keepdim=True)
        n = norm.clamp_min(1e-12)
        g_hat = rows / n
        r = f_hat.neg_().add_(g_hat)  # g_hat - f_hat, in place
        term = r.pow(2).sum(dim=1).mean()
        # d/dg of mean_b |g_b/|g_b| - f_b|^2 = 2 / (B |g_b|) (r_b - g_hat_b (g_hat_b . r_b)); the norm's
        # part vanishes where the clamp holds, as autograd through clamp_min gives
        radial = torch.bmm(g_hat.unsqueeze(1), r.unsqueeze(2)).view(-1, 1) * (norm >= 1e-12)
        r.sub_(g_hat * radial).mul_(2.0 / (rows.shape[0] * n))
        ctx.grad = r.view_as(g)
        return g.clone(), term

    @staticmethod
    def backward(ctx, grad_g: torch.Tensor, grad_term: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_g + grad_term * ctx.grad, None


@contextmanager
def feature_terms(model: nn.Module, pattern: str, fp_feats: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Run ``model`` with the normalized feature loss of each matching block output against ``fp_feats`` (the
    float model's maps, in call order) collected as one scalar per map (Eq. 15's term; their mean is the loss),
    with the value and gradient of the plain autograd expression. Consumes ``fp_feats``: each float map is
    normalized in place and becomes its tap's gradient buffer."""
    count = len(fp_feats)
    fp_feats.reverse()  # popped from the end: in call order
    terms: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        if not fp_feats:
            raise ValueError(f"feature lists differ: the quantized model produced more than {count} maps")
        rows = fp_feats.pop().reshape(out.shape[0], -1)
        out, term = _FeatureTerm.apply(out, rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12)))
        terms.append(term)
        return out

    regex = re.compile(pattern)
    hooks = [m.register_forward_hook(hook) for name, m in model.named_modules() if regex.search(name)]
    if not hooks:
        raise ValueError(f"feature pattern {pattern!r} matches no module")
    try:
        yield terms
    finally:
        for h in hooks:
            h.remove()
    if fp_feats:
        raise ValueError(f"feature lists differ: {count} float vs {len(terms)} quantized maps")


@dataclass
class Stage:
    """One fine-tuning stage: which parameters train, at what learning rate, and an optional projection.

    ``epochs`` overrides the config's for this stage (learned rounding needs many more steps than a range);
    ``penalty(progress)``, with ``progress`` the share of the stage's steps done, returns a term added once
    to each step's loss (AdaRound's regularizer on its annealing schedule), or None for none at that step;
    ``also`` holds further parameters trained in the same steps at their own learning rates.
    """

    name: str
    params: list[nn.Parameter]
    lr: float
    after_step: Callable[[], None] | None = None
    epochs: int | None = None
    penalty: Callable[[float], torch.Tensor | None] | None = None
    also: list[tuple[list[nn.Parameter], float]] = field(default_factory=list)

    def groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning rate) of every group that trains, None entries and empty groups left out."""
        groups = [([p for p in params if p is not None], lr) for params, lr in [(self.params, self.lr), *self.also]]
        return [(params, lr) for params, lr in groups if params]

    def trained(self) -> list[nn.Parameter]:
        return [p for params, _ in self.groups() for p in params]


@dataclass(frozen=True)
class FinetuneConfig:
    """``loss`` is "charbonnier_skt" (QBasicVSR, Eq. 16) or "mse" (QuantVSR: MSE of the outputs)."""

    epochs: int = 1  # per stage
    batch: int = 2  # calibration windows per optimizer step
    micro_batch: int = 1  # windows per forward/backward within a step: the same gradient, a fraction of the memory
    lr_decay: float = 0.9  # per epoch
    eps: float = 1e-6
    lambda_skt: float = 0.1
    loss: str = "charbonnier_skt"
    checkpoint_steps: bool = True  # recompute each recurrent step in backward: bounded memory, one more forward
    holdout: int = 0  # calibration windows kept out of training to judge (and maybe undo) each stage

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch < 1 or self.micro_batch < 1 or self.holdout < 0:
            raise VsrqError(f"fine-tuning: need epochs >= 0, batch >= 1, micro_batch >= 1, holdout >= 0; got {self}")


@dataclass
class StageLog:
    name: str
    steps: int = 0
    seconds: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    holdout_before: float | None = None
    holdout_after: float | None = None
    kept: bool = True
    diverged: bool = False  # the loss or a parameter became NaN / inf: the stage was undone

    def to_dict(self) -> dict:
        d = {"stage": self.name, "steps": self.steps, "seconds": round(self.seconds, 1),
             "loss_first": self.first_loss, "loss_last": self.last_loss}
        if self.diverged:
            d["diverged"] = True
        if self.holdout_before is not None:
            d.update(holdout_before=self.holdout_before, holdout_after=self.holdout_after, kept=self.kept)
        return d


def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train, held-out) window indices: ``holdout`` of ``n`` windows spread evenly, the rest train."""
    if holdout <= 0:
        return list(range(n)), []
    if holdout >= n:
        raise ValueError(f"cannot hold out {holdout} of {n} calibration windows and still train")
    held = sorted({int((i + 1) * n / holdout) - 1 for i in range(holdout)})
    return [i for i in range(n) if i not in held], held


def run_stages(
    ctx: CalibContext,
    student: nn.Module,
    stages: list[Stage],
    cfg: FinetuneConfig,
    feature_pattern: str | None,
) -> list[StageLog]:
    """Train ``stages`` in order on the calibration data, the float model as teacher.

    ``student`` is the base network or a QuantizedModel with a controller, called through the host;
    features for the normalized feature loss are tapped on ``ctx.fp_model`` and ``ctx.base``.
    """
    all_params = [p for p in student.parameters()]
    train, held = split_holdout(len(ctx.calib), cfg.holdout)
    steps = [list(ctx.calls(cfg.micro_batch, train[i : i + cfg.batch])) for i in range(0, len(train), cfg.batch)]
    guard = list(ctx.calls(cfg.micro_batch, held)) if held else []
    logs = []
    with _checkpointing(ctx.base, cfg.checkpoint_steps):
        for stage in stages:
            before = _holdout_loss(ctx, student, guard, cfg, feature_pattern)
            saved = [p.detach().clone() for p in stage.trained()]
            log = _run_stage(ctx, student, stage, steps, all_params, cfg, feature_pattern)
            if log.diverged:
                _restore(stage, saved)
            elif guard and log.steps:
                log.holdout_before, log.holdout_after = before, _holdout_loss(ctx, student, guard, cfg, feature_pattern)
                log.kept = log.holdout_after <= log.holdout_before
                if not log.kept:
                    _restore(stage, saved)
                ctx.log(f"stage {stage.name}: held-out loss {log.holdout_before:.4g} -> {log.holdout_after:.4g}, "
                        + ("kept" if log.kept else "undone"))
            logs.append(log)
    return logs


def _restore(stage: Stage, saved: list[torch.Tensor]) -> None:
    """Put the stage's parameters back as they were before it trained."""
    with torch.no_grad():
        for p, value in zip(stage.trained(), saved):
            p.copy_(value)


def mean_loss(ctx: CalibContext, student: nn.Module, calls: list[ModelCall], cfg: FinetuneConfig,
              feature_pattern: str | None) -> float:
    """The training loss averaged over the calibration items of ``calls`` (no gradients)."""
    with torch.no_grad():
        total = sum(float(_step_loss(ctx, student, call, cfg, feature_pattern)) * call.size for call in calls)
    return total / sum(call.size for call in calls)


def _holdout_loss(ctx: CalibContext, student: nn.Module, guard: list[ModelCall], cfg: FinetuneConfig,
                  feature_pattern: str | None) -> float | None:
    """The training loss averaged over the held-out windows (None without any)."""
    return mean_loss(ctx, student, guard, cfg, feature_pattern) if guard else None


@contextmanager
def _checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Turn on per-step activation checkpointing where the model supports it (BasicVSR does)."""
    previous = getattr(model, "checkpoint_steps", None)
    if previous is not None:
        model.checkpoint_steps = enabled
    try:
        yield
    finally:
        if previous is not None:
            model.checkpoint_steps = previous


def _run_stage(ctx: CalibContext, student: nn.Module, stage: Stage, steps: list[list[ModelCall]],
               all_params: list[nn.Parameter], cfg: FinetuneConfig, feature_pattern: str | None) -> StageLog:
    """Adam over ``steps``; each step's loss is the mean over its windows (they add their gradients call by call:
    every loss here is a mean over windows, so the step's gradient is the one of the whole batch at once)."""
    log = StageLog(stage.name)
    params = stage.trained()
    if not params:
        return log
    for p in all_params:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": group, "lr": lr} for group, lr in stage.groups()])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    start = time.perf_counter()
    epochs = cfg.epochs if stage.epochs is None else stage.epochs
    with progress(total=epochs * len(steps), desc=f"finetune {stage.name}", unit="step",
                  enabled=ctx.show_progress) as bar:
        for _ in range(epochs):
            for calls in steps:
                total = sum(call.size for call in calls)
                opt.zero_grad(set_to_none=True)
                value = 0.0
                term = stage.penalty(log.steps / (epochs * len(steps))) if stage.penalty is not None else None
                if term is not None:
                    term.backward()
                    value += float(term.detach())
                for call in calls:
                    loss = _step_loss(ctx, student, call, cfg, feature_pattern) * (call.size / total)
                    value += float(loss.detach())
                    if not math.isfinite(value):  # diverged: run_stages undoes the stage
                        log.diverged = True
                        break
                    loss.backward()
                    del loss
                    release_free_memory()
                if log.diverged:
                    break
                opt.step()
                if stage.after_step is not None:
                    with torch.no_grad():
                        stage.after_step()
                log.first_loss = value if log.first_loss is None else log.first_loss
                log.last_loss = value
                log.losses.append(value)
                log.steps += 1
                bar.update(1)
            if log.diverged:
                break
            sched.step()
    for p in params:
        p.requires_grad_(False)
    log.diverged = log.diverged or not all(bool(torch.isfinite(p).all()) for p in params)
    log.seconds = time.perf_counter() - start
    if log.diverged:
        ctx.log(f"stage {stage.name}: the loss became NaN or inf after {log.steps} steps (diverged): stage undone")
    else:
        ctx.log(f"stage {stage.name}: {log.steps} steps, loss {log.first_loss:.4g} -> {log.last_loss:.4g}, "
                f"{log.seconds:.0f} s")
    return log


def _step_loss(ctx: CalibContext, student: nn.Module, call: ModelCall, cfg: FinetuneConfig,
               feature_pattern: str | None) -> torch.Tensor:
    if cfg.loss == "mse":
        with torch.no_grad():
            target = ctx.run(ctx.fp_model, call)
        return torch.nn.functional.mse_loss(ctx.run(student, call), target)
    frames = ctx.host.output_frames  # per-frame distances need (clips, T, ...) outputs
    if feature_pattern is None or cfg.lambda_skt == 0:
        with torch.no_grad():
            target = ctx.run(ctx.fp_model, call)
        return charbonnier_frames(frames(ctx.run(student, call), call), frames(target, call), cfg.eps)
    with torch.no_grad(), feature_tap(ctx.fp_model, feature_pattern) as fp_feats:
        target = ctx.run(ctx.fp_model, call)
    with feature_terms(ctx.base, feature_pattern, fp_feats) as terms:
        out = ctx.run(student, call)
    loss = charbonnier_frames(frames(out, call), frames(target, call), cfg.eps)
    return loss + cfg.lambda_skt * torch.stack(terms).mean()
