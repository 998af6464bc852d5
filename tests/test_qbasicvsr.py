"""QBasicVSR: statistics against hand-computed values, thresholds, bits reaching layers, stages, losses, budget."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import smooth_frames
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.config import LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext
from vsrq.methods.finetune import (
    FinetuneConfig,
    Stage,
    charbonnier_frames,
    feature_terms,
    run_stages,
    split_holdout,
)
from vsrq.methods import get_method
from vsrq.methods.pipeline import quantize_model
from vsrq.methods.qbasicvsr import LayerSensitivity, assign_layer_bits, project_bit_budget
from vsrq.models.basicvsr import BasicVSRHost
from vsrq.models.host import HOSTS
from vsrq.quant import accounting
from vsrq.quant.controller import VideoBitController, spatial_complexity, temporal_complexity, video_complexity
from vsrq.quant.layers import QuantLayer

QUIET = dict(log=lambda s: None, show_progress=False)
FEATURES = BasicVSRHost().feature_blocks(None)


# --- statistics ---------------------------------------------------------------------------------


def test_spatial_complexity_of_a_ramp():
    """I = a*j: |dI/dx| = a on all but the last column, dI/dy = 0 -> S = 1e3 * a * (W-1)/W."""
    h, w, a = 5, 8, 0.01
    frame = (a * torch.arange(w, dtype=torch.float64)).expand(3, h, w)
    x = frame[None, None].repeat(1, 2, 1, 1, 1)
    assert torch.allclose(spatial_complexity(x), torch.full((1, 2), 1e3 * a * (w - 1) / w, dtype=torch.float64))


def test_temporal_complexity_of_constant_and_sheared_flows():
    h, w = 6, 7
    const = torch.zeros(1, 1, 2, h, w, dtype=torch.float64)
    const[:, :, 0], const[:, :, 1] = 3.0, 4.0  # |F| = 5 everywhere, Jacobian 0
    assert temporal_complexity([const, const], gamma=200).item() == pytest.approx(5.0)
    shear = torch.zeros(1, 1, 2, h, w, dtype=torch.float64)
    shear[:, :, 0] = 0.1 * torch.arange(w, dtype=torch.float64)  # u = 0.1 x: du/dx = 0.1 except last column
    mag = shear.norm(dim=2).mean().item()
    # averaged over the two flows (the second one is zero): half the magnitude, half the consistency
    expected = mag / 2 + 200 * (0.1 * (w - 1) / w) / 2
    assert temporal_complexity([shear, torch.zeros_like(shear)], gamma=200).item() == pytest.approx(expected)


def test_video_complexity_combines_with_lambda():
    x = torch.rand(2, 3, 3, 8, 8, dtype=torch.float64)
    flows = [torch.rand(2, 2, 2, 8, 8, dtype=torch.float64) for _ in range(2)]
    c = video_complexity(x, flows, gamma=200, lam=10)
    ref = spatial_complexity(x).mean(1) + 10 * temporal_complexity(flows, 200).mean(1)
    assert torch.allclose(c, ref)


def test_layer_sensitivity_matches_numpy():
    layer = QuantLayer(torch.nn.Conv2d(3, 3, 1).double(), None, None)  # statistics read its input
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(4, 2, 3, 5, 5))  # T, B, C, H, W
    stats = LayerSensitivity({"l": layer}, HOSTS["basicvsr"])
    with stats:
        for t in range(4):
            layer(torch.from_numpy(frames[t]))
        stats.end_call()
    space, temp = stats.result()["l"]
    assert space == pytest.approx(frames.std(axis=2, ddof=1).mean())
    assert temp == pytest.approx(frames.std(axis=0, ddof=1).mean())


# --- thresholds -------------------------------------------------------------------------------------


def test_layer_bits_need_both_sensitivities():
    stats = {f"l{i}": (float(i), float(i)) for i in range(10)}  # both rise together
    stats["mixed"] = (100.0, -100.0)  # spatially extreme, temporally dull: stays at 0
    bits = assign_layer_bits(stats, 30, 30)
    assert bits["l0"] == bits["l1"] == bits["l2"] == -1
    assert bits["l8"] == bits["l9"] == 1
    assert bits["l5"] == 0 and bits["mixed"] == 0


def test_video_bits_threshold_logic_and_surrogate_gradient():
    ctrl = VideoBitController(ref_low=10.0, ref_high=20.0)
    bits = ctrl.video_bits(torch.tensor([5.0, 15.0, 25.0]))
    assert bits.tolist() == [-1.0, 0.0, 1.0]
    near = ctrl.video_bits(torch.tensor([19.9]))  # just under the upper threshold
    near.sum().backward()
    assert ctrl.upper.grad.item() < 0  # lowering the threshold would raise the bits: gradient points there
    no_up = VideoBitController(10.0, 20.0, allow_up=False)
    assert no_up.video_bits(torch.tensor([1e6])).item() == 0.0


def test_project_bit_budget():
    offsets = [torch.nn.Parameter(torch.tensor(v)) for v in (0.9, 0.6, 1.2, -0.2)]
    project_bit_budget(offsets, budget_sum=0.0, floors=[-2.0] * 4)
    assert sum(round(float(p.detach())) for p in offsets) <= 0
    assert round(float(offsets[2].detach())) == 1  # the layer that wanted its bit most keeps it


def test_project_bit_budget_breaks_ties_by_priority_and_keeps_each_floor():
    """All offsets integral (the start): the lowest priority is lowered first; a layer at its own floor
    (a base of 3 bits has floor -1 at MIN_BITS 2) is never lowered, so the others pay."""
    offsets = [torch.nn.Parameter(torch.tensor(0.0)) for _ in range(4)]
    project_bit_budget(offsets, budget_sum=-2.0, floors=[-2.0] * 4, priority=[3.0, 0.0, 2.0, 1.0])
    assert [round(float(p.detach())) for p in offsets] == [0, -1, 0, -1]
    offsets = [torch.nn.Parameter(torch.tensor(v)) for v in (-1.0, 0.0, 0.0)]
    project_bit_budget(offsets, budget_sum=-4.0, floors=[-1.0, -2.0, -2.0], priority=[0.0, 1.0, 2.0])
    assert [round(float(p.detach())) for p in offsets] == [-1, -2, -1]
    with pytest.raises(VsrqError, match="FAB budget"):
        project_bit_budget(offsets, budget_sum=-6.0, floors=[-1.0, -2.0, -2.0])


# --- losses -------------------------------------------------------------------------------------------


def test_charbonnier_frames_closed_form():
    p = torch.zeros(2, 3, 3, 4, 4)
    q = torch.full_like(p, 0.5)
    n = 3 * 4 * 4
    assert charbonnier_frames(p, q, eps=1e-3).item() == pytest.approx(math.sqrt(0.25 * n + 1e-6), rel=1e-6)
    assert charbonnier_frames(p, p, eps=1e-3).item() == pytest.approx(1e-3)


def _feature_loss_autograd(fp_feats: list[torch.Tensor], q_feats: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 15 written out with autograd: mean over maps of mean_b || f_b/|f_b| - g_b/|g_b| ||^2."""
    total = 0.0
    for f, g in zip(fp_feats, q_feats):
        f, g = f.flatten(1), g.flatten(1)
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        total = total + (f - g).pow(2).sum(dim=1).mean()
    return total / len(fp_feats)


def _terms_of(fp_feats: list[torch.Tensor], q_feats: list[torch.Tensor]) -> torch.Tensor:
    """The feature loss as fine-tuning computes it: taps on the outputs of blocks that emit ``q_feats``
    (on copies of the float maps, which the taps consume)."""
    blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in q_feats)
    with feature_terms(blocks, r"^\d+$", [f.clone() for f in fp_feats]) as terms:
        outs = [block(g) for block, g in zip(blocks, q_feats)]
    assert all(torch.equal(o, g) for o, g in zip(outs, q_feats))  # the taps pass the maps through unchanged
    return torch.stack(terms).mean()


def test_normalized_feature_loss_closed_forms():
    f = torch.randn(2, 4, 3, 3)
    g = torch.randn(2, 4, 3, 3)
    g = g - (g.flatten(1) * f.flatten(1)).sum(1).view(2, 1, 1, 1) / f.flatten(1).pow(2).sum(1).view(2, 1, 1, 1) * f
    for loss in (_feature_loss_autograd, _terms_of):
        assert loss([f], [3.0 * f]).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
        assert loss([f], [-f]).item() == pytest.approx(4.0)
        assert loss([f, f], [g, f]).item() == pytest.approx(1.0)  # orthogonal (2) and equal (0)


def test_feature_terms_match_autograd_in_value_and_gradient():
    """The taps' gradient, computed in forward, equals autograd's through the plain expression (a zero map too),
    and it adds to the gradient reaching the map from the rest of the loss."""
    gen = torch.Generator().manual_seed(0)
    fp = [torch.randn(3, 5, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    q = [torch.randn(3, 5, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    q[1][2] = 0.0  # a dead row: the clamp holds
    w = torch.randn(3, 5, 4, 4, generator=gen, dtype=torch.float64)
    grads = []
    for loss_fn in (_feature_loss_autograd, _terms_of):
        leaves = [g.clone().requires_grad_(True) for g in q]
        loss = 0.7 * loss_fn(fp, leaves) + (w * leaves[0]).sum()
        loss.backward()
        grads.append((loss.item(), [g.grad for g in leaves]))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="feature lists differ"):
        _terms_of(fp[:2], q)
    with pytest.raises(ValueError, match="feature lists differ"):
        _terms_of(fp, q[:2])


# --- the method on a tiny model ------------------------------------------------------------------------


def _ema_context(clips: int) -> tuple:
    """An EMA-calibrated W4A4 tiny model and the calibration context fine-tuning sees."""
    cfg = QuantConfig(method="ema", wbits=4, abits=4)
    loaded = _loaded()
    calib = _synthetic_calib(clips, 3)
    qm = quantize_model(loaded, cfg, calib, **QUIET)
    return qm, CalibContext(loaded.model, qm.base, qm.layers(), calib, cfg, loaded.host, **QUIET)


def test_each_stage_trains_only_its_own_parameters():
    qm, ctx = _ema_context(2)
    layers = list(qm.layers().values())
    stages = [Stage("w", [l.weight_quantizer.upper for l in layers], 1e-2),
              Stage("a", [p for l in layers for p in (l.input_quantizer.lower, l.input_quantizer.upper)], 1e-2)]
    for stage in stages:
        before = {k: v.clone() for k, v in qm.state_dict().items()}
        run_stages(ctx, qm.base, [stage], FinetuneConfig(batch=2), FEATURES)
        own = {id(p) for p in stage.params}
        names = {n for n, p in qm.named_parameters() if id(p) in own}
        after = qm.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and changed <= names, (stage.name, changed - names)


def test_holdout_windows_are_spread_and_never_trained():
    assert split_holdout(12, 3) == ([0, 1, 2, 4, 5, 6, 8, 9, 10], [3, 7, 11])
    assert split_holdout(5, 0) == ([0, 1, 2, 3, 4], [])
    assert split_holdout(4, 1) == ([0, 1, 2], [3])
    with pytest.raises(ValueError, match="hold out 4 of 4"):
        split_holdout(4, 4)


def test_a_stage_that_hurts_the_held_out_windows_is_undone():
    qm, ctx = _ema_context(3)
    uppers = [l.input_quantizer.upper for l in qm.layers().values()]
    before = {k: v.clone() for k, v in qm.state_dict().items()}

    def sabotage() -> None:  # a "training" step that collapses every activation range
        for u in uppers:
            u.mul_(0.1)

    guarded = FinetuneConfig(batch=1, holdout=1)
    (log,) = run_stages(ctx, qm.base, [Stage("bad", uppers, 1e-3, after_step=sabotage)], guarded, None)
    assert log.steps == 2 and not log.kept and log.holdout_after > log.holdout_before
    assert all(torch.equal(v, qm.state_dict()[k]) for k, v in before.items())
    (log,) = run_stages(ctx, qm.base, [Stage("bad", uppers, 1e-3, after_step=sabotage)], FinetuneConfig(batch=1), None)
    assert log.steps == 3 and log.kept and log.holdout_before is None  # no guard: the damage stays
    assert not torch.equal(before["base.fusion.input_quantizer.upper"], qm.state_dict()["base.fusion.input_quantizer.upper"])


def test_step_checkpointing_changes_no_gradient():
    """Recomputing each recurrent step in backward (bounded memory) gives the same loss and gradients,
    the feature taps inside the recomputed steps included."""
    from vsrq.methods.finetune import _step_loss

    qm, ctx = _ema_context(2)
    params = [l.input_quantizer.upper for l in qm.layers().values()]
    x = next(iter(ctx.calls(2)))
    grads = []
    for on in (False, True):
        qm.base.checkpoint_steps = on
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        loss = _step_loss(ctx, qm.base, x, FinetuneConfig(), FEATURES)
        loss.backward()
        grads.append((loss.item(), torch.stack([p.grad for p in params])))
    qm.base.checkpoint_steps = False
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert grads[0][1].abs().sum() > 0
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)


def test_a_steps_windows_one_at_a_time_give_the_batchs_loss_and_gradient():
    """Fine-tuning runs a step's windows one forward/backward each (micro_batch=1, a fraction of the memory):
    every loss term is a mean over windows, so the per-window losses weighted by their share add up to the
    batch's loss and gradient; a whole stage then logs the same first loss either way."""
    from vsrq.methods.finetune import _step_loss

    qm, ctx = _ema_context(2)
    params = [l.input_quantizer.upper for l in qm.layers().values()]
    for p in params:
        p.requires_grad_(True)
    results = []
    for micro in (2, 1):
        for p in params:
            p.grad = None
        total = 0.0
        for call in ctx.calls(micro):
            loss = _step_loss(ctx, qm.base, call, FinetuneConfig(), FEATURES) * (call.size / 2)
            loss.backward()
            total += loss.item()
        results.append((total, torch.stack([p.grad for p in params])))
    for p in params:
        p.requires_grad_(False)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1].abs().sum() > 0 and torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)
    logs = [run_stages(ctx, qm.base, [Stage("a", list(params), 0.0 + 1e-12)], FinetuneConfig(batch=2, micro_batch=m),
                       FEATURES)[0] for m in (2, 1)]
    assert logs[0].first_loss == pytest.approx(logs[1].first_loss, rel=1e-6)
    with pytest.raises(VsrqError, match="micro_batch >= 1"):
        FinetuneConfig(micro_batch=0)


def test_feature_loss_keeps_no_block_output_for_backward():
    """With steps checkpointed, what a fine-tuning step keeps for backward does not grow with the tapped feature
    maps (QBasicVSR at 8 frames of 64x64 crops kept 1.9 GB of them before the taps computed their gradient)."""
    from vsrq.methods.finetune import _step_loss

    qm, ctx = _ema_context(2)
    for l in qm.layers().values():
        l.input_quantizer.upper.requires_grad_(True)
    call = next(iter(ctx.calls(2)))
    saved = {}
    qm.base.checkpoint_steps = True
    for pattern in (None, FEATURES):
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _step_loss(ctx, qm.base, call, FinetuneConfig(), pattern)
        saved[pattern] = sum(storages.values())
    qm.base.checkpoint_steps = False
    feat = qm.base.num_feat * call.args[0].shape[-1] * call.args[0].shape[-2] * 2 * 4  # one map, both clips
    assert saved[FEATURES] - saved[None] < feat


def test_qbasicvsr_bits_reach_layers_and_survive_a_checkpoint(tmp_path):
    from vsrq import checkpoint

    # one range set fine-tuned (the auto refresh's two candidates are tested below): bits, not ranges, are the point
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"batch": 2, "omse_refresh": False})
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(3, 3), **QUIET)
    layer_bits = [l.input_quantizer.bits for l in qm.layers().values()]
    assert set(layer_bits) <= {3, 4, 5} and len(set(layer_bits)) > 1  # TS-LBA spread the bits
    busy = torch.rand(1, 3, 3, 64, 64)  # white noise: far above any smooth calibration clip
    with torch.no_grad():
        out = qm(busy)
    assert qm.controller.last_bits.item() == 1.0
    assert [l.input_quantizer.current_bits() for l in qm.layers().values()] == [min(b + 1, 8) for b in layer_bits]
    fab = accounting.count(qm).fab
    assert fab == pytest.approx(np.mean(layer_bits) + 1)
    loaded = checkpoint.load(checkpoint.save(qm, tmp_path / "q.vsrq"))
    with torch.no_grad():
        assert torch.equal(loaded(busy), out)


def test_fab_budget_holds_for_every_video():
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"fab_budget": 4.0, "batch": 2,
                                                                     "omse_refresh": False})
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(3, 3), **QUIET)
    for video in (torch.rand(1, 3, 3, 64, 64), torch.zeros(1, 3, 3, 64, 64),
                  torch.from_numpy(smooth_frames(3, 64, 64)).float().div(255).permute(0, 3, 1, 2)[None]):
        with torch.no_grad():
            qm(video)
        assert accounting.count(qm).fab <= 4.0 + 1e-9


def test_rule_pinned_layers_keep_their_bits_and_the_rest_pay_for_them_under_the_budget():
    """A rule at A8 on the first trunk conv and the output conv: those stay at 8 bits through TS-LBA, the
    projection and fine-tuning, the other layers go down so that FAB stays at or under 4.0."""
    rules = (LayerRule("*_trunk.main.0", abits=8), LayerRule("conv_last", abits=8))
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, rules=rules,
                      options={"fab_budget": 4.0, "batch": 2, "omse_refresh": False, "fg_vba": False})
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(3, 3), **QUIET)
    bits = {n: l.input_quantizer.current_bits() for n, l in qm.layers().items()}
    pinned = [n for n in bits if n.endswith("_trunk.main.0") or n == "conv_last"]
    assert len(pinned) == 3 and all(bits[n] == 8 for n in pinned)
    assert sum(bits.values()) <= 4 * len(bits)
    assert sum(4 - b for n, b in bits.items() if n not in pinned) >= 12  # the 12 bits over 4.0, paid by the rest
    assert qm.manifest["notes"]["pinned_abits"] == {"8": 3}
    assert accounting.count(qm).fab <= 4.0 + 1e-9
    # at 3 bits at least, the 8 other layers can pay 8 of the 12 bits: the budget says it cannot be met
    with pytest.raises(VsrqError, match="cannot be met"):
        quantize_model(_loaded(), replace(cfg, options={**cfg.options, "min_abits": 3}), _synthetic_calib(1, 3), **QUIET)
    with pytest.raises(VsrqError, match="min_abits"):
        get_method("qbasicvsr")(QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"min_abits": 1}))


def test_auto_refresh_keeps_the_fine_tuned_candidate_with_the_lower_calibration_loss():
    """omse_refresh=auto fine-tunes both range sets from one start and keeps the better: the result is
    the single-setting run it chose, to the bit, and that run's loss is the lower one."""
    calib = _synthetic_calib(2, 3)
    x = torch.from_numpy(smooth_frames(3, 64, 64, seed=3)).float().div(255).permute(0, 3, 1, 2)[None]
    outputs = {}
    chosen = None
    for refresh in ("auto", None):  # None: the setting auto chose, on its own
        opts = {"omse_refresh": chosen == "omse" if refresh is None else refresh, "batch": 2, "fg_vba": False,
                "ts_lba": False}
        qm = quantize_model(_loaded(), QuantConfig(method="qbasicvsr", wbits=4, abits=4, options=opts), calib, **QUIET)
        with torch.no_grad():
            outputs[refresh] = qm(x)
        if refresh == "auto":
            notes = qm.manifest["notes"]["omse_refresh"]
            losses = {"omse": notes["loss_omse"], "ema": notes["loss_ema"]}
            chosen = notes["chosen"]
            assert losses["omse"] != losses["ema"] and chosen == min(losses, key=losses.get)
    assert torch.equal(outputs["auto"], outputs[None])
    with pytest.raises(VsrqError, match="omse_refresh"):
        quantize_model(_loaded(), QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"omse_refresh": "yes"}),
                       calib, **QUIET)


def test_without_omse_refresh_activations_keep_the_ema_ranges():
    calib = _synthetic_calib()
    opts = {"finetune": False, "omse_refresh": False}
    qm = quantize_model(_loaded(), QuantConfig(method="qbasicvsr", wbits=4, abits=4, options=opts), calib, **QUIET)
    ema = quantize_model(_loaded(), QuantConfig(method="ema", wbits=4, abits=4), calib, **QUIET)
    refreshed = quantize_model(_loaded(), QuantConfig(method="qbasicvsr", wbits=4, abits=4,
                                                      options={"finetune": False, "omse_refresh": True}),
                               calib, **QUIET)
    for name, layer in qm.layers().items():
        q, e = layer.input_quantizer, ema.layers()[name].input_quantizer
        assert torch.equal(q.lower, e.lower) and torch.equal(q.upper, e.upper), name
    assert any(not torch.equal(l.input_quantizer.upper, ema.layers()[n].input_quantizer.upper)
               for n, l in refreshed.layers().items())


def test_a_stage_penalty_is_added_once_per_step_on_its_schedule():
    """``Stage.epochs`` overrides the config's; ``penalty`` sees the share of steps done and its gradient trains:
    a free parameter that only the penalty reaches moves by exactly lr per step under a constant gradient (Adam)."""
    qm, ctx = _ema_context(2)
    free = torch.nn.Parameter(torch.zeros(()))
    seen: list[float] = []

    def penalty(done: float) -> torch.Tensor | None:
        seen.append(done)
        return None if done < 0.5 else -free

    upper = next(iter(qm.layers().values())).input_quantizer.upper  # gives the data loss a gradient path
    (log,) = run_stages(ctx, qm.base, [Stage("p", [free, upper], 0.1, epochs=4, penalty=penalty)],
                        FinetuneConfig(batch=1, lr_decay=1.0), None)
    assert log.steps == 8 and seen == [i / 8 for i in range(8)]
    assert math.isclose(float(free), 0.4, rel_tol=1e-5)  # 4 penalized steps of lr 0.1 each
