"""AdaRound's learned rounding, QDrop's dropping, and the BRECQ / QDrop recipes over block reconstruction."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import vsrq
from tests.test_hosts import QUIET, tiny_animesr
from tests.test_quant_layers import _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.methods.reconstruct import ReconstructionConfig, _Recorder
from vsrq.quant.grid import int_range
from vsrq.quant.layers import QuantLayer
from vsrq.quant.quantizer import FakeQuantizer
from vsrq.quant.rounding import (GAMMA, ZETA, beta_schedule, initial_rounding, rectified_sigmoid,
                                 rounding_at_nearest, rounding_regularizer)

W4 = QuantizerSpec(bits=4, symmetric=True, granularity="channel", observer="minmax")


def _weight_quantizer(w: torch.Tensor) -> FakeQuantizer:
    q = FakeQuantizer(W4, "weight", 0)
    q.init_from_tensor(w)
    return q


def test_rectified_sigmoid_reaches_0_and_1_and_inverts_the_start():
    v = torch.tensor([-50.0, 50.0, 0.0])
    h = rectified_sigmoid(v)
    assert h[0] == 0 and h[1] == 1 and math.isclose(float(h[2]), 0.5 * (ZETA - GAMMA) + GAMMA)
    rest = torch.linspace(0, 0.999, 101, dtype=torch.float64)
    assert torch.allclose(rectified_sigmoid(initial_rounding(rest)), rest, atol=1e-12)


def test_regularizer_closed_form():
    v = initial_rounding(torch.tensor([0.0, 0.5, 0.25, 1.0 - 1e-9], dtype=torch.float64))
    # 1 - |2h - 1|^beta per weight: 0 at h = 0 or 1, 1 at h = 1/2, 1 - 0.5^beta at h = 1/4
    for beta in (2.0, 20.0):
        want = 0 + 1 + (1 - 0.5**beta) + 0
        assert math.isclose(float(rounding_regularizer(v, beta)), want, rel_tol=1e-6)


def test_beta_anneals_from_start_to_end_after_the_warm_up():
    iters, warmup = 100, 0.2
    assert [beta_schedule(s, iters, warmup) for s in (0, 19)] == [None, None]
    assert beta_schedule(20, iters, warmup) == 20.0
    assert math.isclose(beta_schedule(60, iters, warmup), 2.0 + 18.0 * 0.5)
    assert beta_schedule(100, iters, warmup) == 2.0


def test_soft_rounding_starts_at_the_float_weight():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    q = _weight_quantizer(w)
    q.start_learned_rounding(w)
    with torch.no_grad():
        assert torch.allclose(q(w), w, atol=1e-6)  # h(V) = frac(w/S): inside the grid nothing moves yet


def test_the_starting_hard_choice_is_round_to_nearest_at_ties_too():
    """V >= 0 exactly where torch.round (ties to even) rounds up: at exact halves, one float step either side of
    them, and elsewhere; h(V) stays the fractional part."""
    half = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 7.5], dtype=torch.float32)
    near = torch.cat([torch.nextafter(half, half + 1), torch.nextafter(half, half - 1)])
    x = torch.cat([half, near, torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 5])
    v = rounding_at_nearest(x)
    assert torch.equal(v >= 0, torch.round(x) > torch.floor(x))
    assert torch.equal(torch.floor(x) + (v >= 0).float(), torch.round(x))
    assert torch.allclose(rectified_sigmoid(v), x - torch.floor(x), atol=2e-6)


def test_regularizer_alone_converges_to_round_to_nearest():
    """With a zero reconstruction loss, the regularizer pulls each h(V) to the nearer of 0 and 1: the
    learned codes become round-to-nearest (ties aside)."""
    torch.manual_seed(1)
    w = torch.randn(8, 4, 3, 3)
    q = _weight_quantizer(w)
    v = q.start_learned_rounding(w)
    opt = torch.optim.Adam([v], lr=0.05)
    for step in range(400):
        beta = beta_schedule(step, 400, 0.0)
        loss = rounding_regularizer(v, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.hard_rounding = True
    scale, zp = q.scale_and_zero_point()
    with torch.no_grad():
        learned = q.to_rows(q(w)) / scale.view(-1, 1)
    x = q.to_rows(w) / scale.view(-1, 1)
    nearest = torch.clamp(torch.round(x), *int_range(4, True))
    far_from_tie = (x - torch.floor(x) - 0.5).abs() > 0.05
    assert torch.equal(torch.round(learned)[far_from_tie], nearest[far_from_tie])
    assert float(rectified_sigmoid(v.detach()).sub(0.5).abs().min()) > 0.45  # every h ended at 0 or 1 (nearly)


def test_baked_rounding_is_on_the_grid_and_only_floor_or_ceiling():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(4, 6, 3)
    layer = QuantLayer(conv, W4, None)
    layer.weight_quantizer.init_from_tensor(layer.weight)
    nearest, scale, zp = layer.weight_codes()
    v = layer.start_learned_rounding()
    with torch.no_grad():
        v.copy_(torch.randn_like(v) * 3)  # an arbitrary learned choice
    x = layer.weight_quantizer.to_rows(layer.weight.detach()) * (1.0 / scale.view(-1, 1))
    up = (v >= 0).float()
    want = torch.clamp(torch.floor(x) + up, *int_range(4, True))
    bias = layer.bias.detach().clone()
    layer.bake_rounding()
    codes, scale2, _ = layer.weight_codes()
    assert layer.weight_quantizer.rounding is None and torch.equal(scale2, scale)
    assert torch.equal(layer.weight_quantizer.to_rows(codes).float(), want)
    assert (codes - nearest).abs().max() <= 1 and not torch.equal(codes, nearest)
    assert torch.allclose(layer.weight, (codes.float() * scale.view(-1, 1, 1, 1)), atol=0)  # on the grid exactly
    assert torch.equal(layer.bias, bias)


def test_qdrop_passes_about_the_drop_share_unquantized():
    q = FakeQuantizer(QuantizerSpec(bits=2, symmetric=False, granularity="tensor", observer="minmax"))
    x = torch.rand(100_000) * 10
    q.init_from_tensor(x)
    quantized = q(x)
    q.drop, q.drop_generator = 0.5, torch.Generator().manual_seed(0)
    mixed = q(x)
    passed = (mixed == x) & (quantized != x)
    share = float(passed.sum() / (quantized != x).sum())
    assert abs(share - 0.5) < 0.01
    assert torch.equal(mixed[~passed], quantized[~passed])


def test_recorders_with_one_seed_keep_the_same_calls_within_the_budget():
    module = torch.nn.Identity()
    a = _Recorder(module, True, True, seed=3, budget=10 * 2 * 64 * 4, input_copies=1)  # room for 10 calls
    for i in range(50):
        module(torch.full((64,), float(i)))
    a.remove()
    b = _Recorder(module, True, False, seed=3, capacity=a.capacity)
    for i in range(50):
        module(torch.full((64,), float(i)))
    b.remove()
    assert a.capacity == 10 and len(a.entries) == 10 and a.count == 50
    kept_a = [int(out[0]) for _, out in a.entries]
    kept_b = [int(inp[0][0][0]) for inp, _ in b.entries]
    assert kept_a == kept_b and len(set(kept_a)) == 10 and max(kept_a) >= 10  # a sample from the whole pass


@pytest.fixture(scope="module")
def brecq_model():
    model = tiny_animesr()
    calib = _synthetic_calib(2, 3, size=32)
    qm = vsrq.quantize(model, QuantConfig(method="brecq", wbits=4, abits=4, options={"iters": 40, "samples": 2}),
                       calib, **QUIET)
    start = vsrq.quantize(model, QuantConfig(method="omse", wbits=4, abits=4), calib, **QUIET)
    return model, qm, start


def test_brecq_lowers_every_units_error_and_moves_codes_by_at_most_one(brecq_model):
    _, qm, start = brecq_model
    notes = qm.manifest["notes"]["reconstruction"]
    assert notes["rounding"] is True and notes["inputs"] == "quant" and notes["drop"] == 0.0
    units = notes["units"]
    assert len(units) >= 5 and any(".body_s1_first." in u for u in units)
    for name, f in units.items():
        assert f["mse_after"] <= f["mse_before"], (name, f)
    assert sum(f["mse_after"] for f in units.values()) < 0.97 * sum(f["mse_before"] for f in units.values())
    assert any(f.get("codes_off_nearest", 0) > 0 for f in units.values())
    for name, layer in qm.layers().items():
        ref = start.layers()[name]
        codes, scale, _ = layer.weight_codes()
        ref_codes, ref_scale, _ = ref.weight_codes()
        assert torch.equal(scale, ref_scale), name  # the weight grid is the OMSE start's, untouched
        assert (codes - ref_codes).abs().max() <= 1, name
        if layer.bias is not None:
            assert torch.equal(layer.bias, ref.bias), name  # nothing outside the trained tensors moves
        assert layer.weight_quantizer.rounding is None and layer.input_quantizer.drop == 0.0


def test_brecq_checkpoint_reloads_bit_identically(brecq_model, tmp_path: Path):
    model, qm, _ = brecq_model
    clip = _synthetic_calib(1, 3, size=32).clips[0][None]
    path = checkpoint.save(qm, tmp_path / "b.vsrq")
    frozen = copy.deepcopy(qm).freeze()
    with torch.no_grad():
        out = qm(clip)
        assert torch.equal(checkpoint.load(path)(clip), out) and torch.equal(frozen(clip), out)


@pytest.mark.parametrize("inputs", ["fp", "mix"])
def test_float_and_mixed_inputs_reconstruct_too(inputs: str):
    qm = vsrq.quantize(tiny_animesr(), QuantConfig(method="qdrop", wbits=4, abits=4,
                                                   options={"iters": 10, "samples": 1, "inputs": inputs}),
                       _synthetic_calib(1, 2, size=32), **QUIET)
    units = qm.manifest["notes"]["reconstruction"]["units"]
    assert qm.manifest["notes"]["reconstruction"]["drop"] == 0.5
    assert all(f["mse_after"] <= f["mse_before"] for f in units.values())


@pytest.mark.fault
def test_bad_reconstruction_options_are_one_error():
    with pytest.raises(VsrqError, match="inputs must be one of"):
        vsrq.quantize(tiny_animesr(), QuantConfig(method="brecq", wbits=4, abits=4, options={"inputs": "float"}),
                      _synthetic_calib(1, 2, size=32), **QUIET)
    for bad in ({"drop": 1.0}, {"warmup": 1.0}, {"samples": 0}, {"memory_mb": 0}):
        with pytest.raises(VsrqError, match="block reconstruction"):
            ReconstructionConfig(**bad)
