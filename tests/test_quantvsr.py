"""QuantVSR's layer and recipe, QuaRot and SVDQuant: rotation, SVD branch, rank rule, LBA, stages."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import smooth_frames
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext
from vsrq.methods.finetune import FinetuneConfig, Stage, run_stages
from vsrq.methods.pipeline import quantize_model
from vsrq.methods.quantvsr import (
    CLIP_GRID,
    ClipSearch,
    QuantVSR,
    allocate_ranks,
    clip_grid,
    max_rank,
    svd_lowrank_factors,
)
from vsrq.models.catalog import loaded_module
from vsrq.models.host import HOSTS
from vsrq.quant.layers import QuantLayer
from vsrq.quant.rotation import PALEY_ORDERS, HadamardRotation, block_plan, fwht, hadamard_block

QUIET = dict(log=lambda s: None, show_progress=False)
SUPPORTED_SIZES = sorted({m * 2**k for m in (1,) + PALEY_ORDERS for k in range(0, 8) if m * 2**k <= 4096})


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def test_fwht_equals_dense_sylvester_hadamard():
    x = torch.randn(3, 64, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ _sylvester(64).T)


@pytest.mark.parametrize("n", SUPPORTED_SIZES + [3, 67, 100, 130])
def test_rotation_is_orthogonal_and_transpose_inverts_it(n: int):
    rot = HadamardRotation(n, seed=n)
    q = rot.matrix().double()
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(q @ q.T, eye, atol=1e-5, rtol=0)
    x = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(q.T @ (q @ x), x, atol=1e-5, rtol=0)
    if hadamard_block(n) is not None:
        assert block_plan(n) == [n]  # a single Hadamard block mixes every channel
        assert torch.allclose(q.abs() * math.sqrt(n), torch.ones_like(q), atol=1e-4)  # +-1/sqrt(n) entries


@pytest.mark.parametrize("n, dim", [(64, 1), (67, 1), (96, -1), (20, 0)])
def test_dense_rotation_equals_the_fwht(n: int, dim: int):
    """Small rotations run as one dense product: the same Q x as the FWHT, and rebuilt after new signs."""
    rot = HadamardRotation(n, seed=n)
    shape = {1: (2, n, 5, 6), -1: (3, 4, n), 0: (n, 7)}[dim]
    x = torch.randn(*shape, dtype=torch.float64)
    assert torch.allclose(rot.apply(x, dim), rot.fast_apply(x, dim), atol=1e-12)
    rot.signs.mul_(-1)  # e.g. loaded from a checkpoint: the cached matrix must not be reused
    assert torch.allclose(rot.apply(x, dim), rot.fast_apply(x, dim), atol=1e-12)


def test_rotation_leaves_the_float_product_unchanged():
    torch.manual_seed(0)
    conv = nn.Conv2d(20, 6, 3, padding=1)
    layer = QuantLayer(conv, QuantizerSpec(bits=8, symmetric=True, granularity="channel", dynamic=True),
                       QuantizerSpec(bits=8, dynamic=True))
    layer.add_rotation(seed=3)
    layer.weight_quantizer.mode = layer.input_quantizer.mode = "off"
    x = torch.randn(2, 20, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)


def test_svd_branch_is_exact_at_full_rank():
    torch.manual_seed(1)
    w = torch.randn(12, 30)
    up, down = svd_lowrank_factors(w, 12)
    torch.testing.assert_close(up @ down, w, atol=1e-5, rtol=1e-5)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer = QuantLayer(conv, QuantizerSpec(bits=2, symmetric=True, granularity="channel", dynamic=True),
                       QuantizerSpec(bits=2, dynamic=True))
    layer.add_lowrank(*svd_lowrank_factors(layer.weight_matrix(), 8))  # full rank: R = 0, nothing left to quantize
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), atol=1e-4, rtol=1e-4)


def test_randomized_svd_path_matches_best_low_rank():
    torch.manual_seed(2)
    big = torch.randn(1100, 8) @ torch.randn(8, 1000) + 0.01 * torch.randn(1100, 1000)  # > 2^20 entries
    up, down = svd_lowrank_factors(big, 8)
    assert (big - up @ down).norm() / big.norm() < 0.02


def test_rank_rule_on_crafted_statistics():
    values = {
        "hot": [(20.0, 20.0)] * 12,  # both above the 75th percentiles on every input: 16 + 12 = 28 -> 32
        "cold": [(0.0, 0.0)] * 12,  # never above: stays at r_min
        "mixed": [(0.0, 15.0)] * 12,  # spatially busy, temporally still: unchanged
        "mid": [(5.0, 5.0)] * 12,
    }
    ranks = allocate_ranks(values, {k: 64 for k in values})
    assert ranks == {"hot": 32, "cold": 16, "mixed": 16, "mid": 16}
    capped = allocate_ranks(values, {"hot": 24, "cold": 64, "mixed": 64, "mid": 64})
    assert capped["hot"] == 24


def test_folding_lba_changes_no_output():
    conv = nn.Conv2d(4, 5, 3, padding=1)
    layer = QuantLayer(conv, QuantizerSpec(bits=4, symmetric=True, granularity="channel", dynamic=True),
                       QuantizerSpec(bits=4, dynamic=True))
    layer.add_bias_alignment()
    layer.bias_align.data = torch.randn(5)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        before = layer(x)
        layer.fold_bias_alignment()
        torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    assert layer.bias_align is None


def test_each_quantvsr_stage_trains_only_its_own_parameters():
    cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, options={"branch": "svd", "lba": False})
    loaded = _loaded(num_feat=32)
    qm = quantize_model(loaded, cfg, _synthetic_calib(2, 3), **QUIET)
    for layer in qm.layers().values():
        layer.add_bias_alignment()
    ctx = CalibContext(loaded.model, qm.base, qm.layers(), _synthetic_calib(2, 3), cfg, loaded.host, **QUIET)
    layers = [l for l in qm.layers().values()]
    for stage in (Stage("dual-branch", [p for l in layers if l.rank for p in (l.lowrank_up, l.lowrank_down)], 1e-2),
                  Stage("lba", [l.bias_align for l in layers], 1e-2)):
        before = {k: v.clone() for k, v in qm.state_dict().items()}
        run_stages(ctx, qm.base, [stage], FinetuneConfig(batch=2, loss="mse"), None)
        own = {n for n, p in qm.named_parameters() if any(p is q for q in stage.params)}
        changed = {k for k, v in qm.state_dict().items() if not torch.equal(before[k], v)}
        assert changed and changed <= own, (stage.name, changed - own)


@pytest.mark.parametrize("method, options", [("quantvsr", {"batch": 2, "epochs": 1}), ("quarot", {}), ("svdquant", {})])
def test_methods_end_to_end_with_checkpoint(method: str, options: dict, tmp_path: Path):
    cfg = QuantConfig(method=method, wbits=4, abits=4, options=options)
    qm = quantize_model(_loaded(num_feat=32), cfg, _synthetic_calib(2, 3), **QUIET)
    x = torch.from_numpy(smooth_frames(3, 64, 64, seed=5)).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        y = qm(x)
        y_fp = _loaded(num_feat=32).model(x)
    assert (y - y_fp).abs().mean() < 0.05
    for layer in qm.layers().values():
        assert not layer.weight_quantizer.spec.dynamic  # static per-channel weights in the result
        assert layer.bias_align is None  # LBA folded
    if method == "quarot":
        assert all(l.rotation is not None and l.rank == 0 for l in qm.layers().values())
    if method == "svdquant":
        assert all(l.rank == min(32, max_rank(l, 64)) for l in qm.layers().values())  # fixed rank 32 where it fits
        assert any(l.rank for l in qm.layers().values()) and all(l.smooth is not None for l in qm.layers().values())
    loaded = checkpoint.load(checkpoint.save(qm, tmp_path / "m.vsrq"))
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_refine_option_trains_a_uniform_svd_branch_only_when_asked():
    """branch=svd keeps its SVD factors unless refine=true (the ablation that separates STCA's allocation)."""
    base = {"branch": "svd", "lba": False, "fixed_rank": 8, "batch": 2, "epochs": 1}
    runs = {}
    for refine in (None, True):
        cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, options={**base, "refine": refine})
        qm = quantize_model(_loaded(num_feat=32), cfg, _synthetic_calib(2, 3), **QUIET)
        runs[refine] = ({n: l.lowrank_up.detach().clone() for n, l in qm.layers().items() if l.rank}, qm.manifest)
    plain, refined = runs[None], runs[True]
    assert plain[0].keys() == refined[0].keys() and plain[0]
    assert "stages" not in plain[1]["notes"]
    assert [s["stage"] for s in refined[1]["notes"]["stages"]] == ["dual-branch"]
    assert any(not torch.equal(plain[0][n], refined[0][n]) for n in plain[0])
    assert QuantVSR.refines({"branch": "stca", "refine": None}) and not QuantVSR.refines({"branch": "none", "refine": True})


def test_per_token_globs_select_the_layers_with_per_token_activations(tmp_path: Path):
    """per_token as globs: the layers they cover (parts of a split conv included) get one range per pixel, the rest
    one per tensor; saved and loaded; a glob covering no quantized layer and a bad value are clear errors."""
    cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, split_concat=True,
                      options={"branch": "svd", "lba": False, "per_token": ["upconv*", "forward_trunk.main.0"]})
    qm = quantize_model(_loaded(num_feat=32), cfg, _synthetic_calib(2, 3), **QUIET)
    grains = {n: l.input_quantizer.spec.granularity for n, l in qm.layers().items()}
    token = {n for n, g in grains.items() if g == "token"}
    assert token == {"upconv1", "upconv2", "forward_trunk.main.0.parts.0", "forward_trunk.main.0.parts.1"}
    assert "tensor" in grains.values()
    loaded = checkpoint.load(checkpoint.save(qm, tmp_path / "m.vsrq"))
    assert {n: l.input_quantizer.spec.granularity for n, l in loaded.layers().items()} == grains
    x = torch.from_numpy(smooth_frames(3, 64, 64, seed=5)).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
    for per_token, message in ((["upconv"], "'upconv' cover no quantized layer"), ("upconv*", "per_token must be")):
        with pytest.raises(VsrqError, match=message):
            quantize_model(_loaded(num_feat=32), QuantConfig(method="quantvsr", wbits=4, abits=4,
                                                             options={"per_token": per_token}),
                           _synthetic_calib(2, 3), **QUIET)


def test_clip_search_picks_the_ratio_with_least_output_error():
    """Heavy-tailed inputs at 4 bits: the search clips (ratio < 1) and its choice is the grid's least error,
    recomputed here layer by layer; a light-tailed input keeps a ratio near 1."""
    torch.manual_seed(4)
    weight_spec = QuantizerSpec(bits=4, symmetric=True, granularity="channel", dynamic=True)
    layer = QuantLayer(nn.Conv2d(16, 8, 3, padding=1), weight_spec, QuantizerSpec(bits=4, dynamic=True))
    uniform = QuantLayer(nn.Conv2d(16, 8, 3, padding=1), None, QuantizerSpec(bits=4, dynamic=True))
    heavy = torch.distributions.StudentT(2.0).sample((2, 16, 24, 24))
    light = torch.rand(2, 16, 24, 24)
    search = ClipSearch({"heavy": layer, "light": uniform}, HOSTS["basicvsr"])
    for layer_ in (layer, uniform):
        layer_.mode = "fp"
    with search, torch.no_grad():
        layer(heavy)
        uniform(light)
    best = search.best()
    assert best["heavy"] < 0.8 and best["light"] >= 0.9
    with torch.no_grad():
        target = layer.forward(heavy)
        layer.mode = "quant"
        errors = []
        for ratio in CLIP_GRID:
            layer.input_quantizer.set_clip_ratio(ratio)
            errors.append(float((layer(heavy) - target).pow(2).sum()))
    assert CLIP_GRID[min(range(len(errors)), key=errors.__getitem__)] == best["heavy"]
    # every=2 judges the 2nd, 4th, ... call of a layer in each batch: never the zero-state first step
    layer.mode = "fp"
    sparse = ClipSearch({"heavy": layer}, HOSTS["basicvsr"], every=2)
    with sparse, torch.no_grad():
        layer(heavy)
        assert not sparse.errors["heavy"].any()
        layer(heavy)
        judged = sparse.errors["heavy"].clone()
        assert judged.all()
        sparse.end_call()
        layer(heavy)
    assert torch.equal(sparse.errors["heavy"], judged)


def test_act_clip_option_sets_saves_and_reloads_the_ratios(tmp_path: Path):
    """act_clip: every quantized layer gets a searched ratio, recorded in the manifest and kept by the checkpoint."""
    cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, options={"branch": "svd", "lba": False, "act_clip": True})
    qm = quantize_model(_loaded(num_feat=32), cfg, _synthetic_calib(2, 3), **QUIET)
    ratios = qm.manifest["notes"]["act_clip"]
    assert set(ratios) == set(qm.layers()) and all(r in CLIP_GRID for r in ratios.values())
    assert {n: float(l.input_quantizer.clip_ratio) for n, l in qm.layers().items()} == pytest.approx(ratios)
    loaded = checkpoint.load(checkpoint.save(qm, tmp_path / "m.vsrq"))
    assert {n: float(l.input_quantizer.clip_ratio) for n, l in loaded.layers().items()} == pytest.approx(ratios)
    x = torch.from_numpy(smooth_frames(3, 64, 64, seed=5)).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))


@pytest.mark.fault
def test_act_clip_floor_sets_the_grid_and_bad_values_are_clear_errors():
    assert CLIP_GRID == clip_grid(0.35) and CLIP_GRID[0] == 1.0 and CLIP_GRID[-1] == 0.35 and len(CLIP_GRID) == 14
    assert clip_grid(0.15)[-1] == 0.15 and len(clip_grid(0.15)) == 18 and clip_grid(1.0) == (1.0,)
    for bad, message in (("x", "smallest clip ratio, got 'x'"), (1.5, r"in \(0, 1\], got 1.5"), (0, "in \\(0, 1\\]")):
        with pytest.raises(VsrqError, match=message):
            QuantVSR(QuantConfig(method="quantvsr", wbits=4, abits=4, options={"act_clip": bad}))


@pytest.mark.fault
def test_a_rank_no_layer_can_hold_is_one_clear_error():
    from tests.test_hosts import QUIET, captured, tiny_denoiser

    for options, message in (({"branch": "svd", "fixed_rank": 4096}, "fixed_rank=4096 is larger than any"),
                             ({"r_min": 2048, "r_max": 4096}, "r_min=2048 is larger than any"),
                             ({"r_min": 32, "r_max": 16}, "need 1 <= r_min <= r_max")):
        with pytest.raises(VsrqError, match=message):
            quantize_model(loaded_module(tiny_denoiser()), QuantConfig(method="quantvsr", wbits=4, abits=4,
                                                                       options=options), captured(1), **QUIET)


@pytest.mark.parametrize("family", ["basicvsr", "mgldvsr"])
def test_ts_lba_option_gives_quantvsr_per_layer_bits_on_the_hosts_time_axis(family: str, tmp_path: Path):
    """QBasicVSR's TS-LBA inside QuantVSR (option ts_lba): activation bits abits + b_L per layer, b_L from the
    statistics of the float model's layer inputs read through the host, for a recurrent and a batched family."""
    from tests.test_hosts import FAMILIES
    from vsrq.methods.qbasicvsr import LayerSensitivity, assign_layer_bits
    from vsrq.quant import accounting

    build, make_calib, probe = FAMILIES[family]
    model, calib = build(), make_calib()
    cfg = QuantConfig(method="quantvsr", wbits=6, abits=6, options={"ts_lba": True, "branch": "none", "lba": False})
    qm = quantize_model(loaded_module(model), cfg, calib, **QUIET)
    offsets = {n: l.input_quantizer.bits - 6 for n, l in qm.layers().items()}
    assert set(offsets.values()) == {-1, 0, 1}
    plain = quantize_model(loaded_module(model), QuantConfig(method="minmax", wbits=6, abits=6), calib, **QUIET)
    ctx = CalibContext(model, plain.base, plain.layers(), calib, cfg, plain.host, **QUIET)
    stats = LayerSensitivity(plain.layers(), plain.host)
    stats.run(ctx)
    assert offsets == assign_layer_bits(stats.result(), 30.0, 30.0)
    assert sum(qm.manifest["notes"]["layer_bits"].values()) == len(offsets)
    args = probe()
    with torch.no_grad():
        out = qm(*args)
    assert accounting.count(qm).fab == pytest.approx(6 + sum(offsets.values()) / len(offsets))
    again = checkpoint.load(checkpoint.save(qm, tmp_path / "t.vsrq"))
    assert {n: l.input_quantizer.bits for n, l in again.layers().items()} == {n: 6 + b for n, b in offsets.items()}
    with torch.no_grad():
        assert torch.equal(again(*args), out)
