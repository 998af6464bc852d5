"""TARQ: QBasicVSR's calibration with split concatenations, then rounding learned on whole windows."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_basicvsr
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.config import LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.methods.tarq import TARQ
from vsrq.models.animesr import AnimeSR, AnimeSRHost
from vsrq.models.basicvsr import BasicVSRHost
from vsrq.quant.split import split_concat_inputs

QUIET = dict(log=lambda s: None, show_progress=False)
SMALL = {"epochs": 1, "batch": 2, "round_epochs": 2, "fg_vba": False}


def _tarq(**options: object):
    config = QuantConfig(method="tarq", wbits=4, abits=4, options={**SMALL, **options})
    return quantize_model(_loaded(), config, _synthetic_calib(2, 3), **QUIET)


def test_learned_rounding_is_baked_onto_the_grid():
    qm = _tarq(lr_round=0.05)
    assert qm.manifest["config"]["split_concat"] is True  # fixed by the recipe
    facts = qm.manifest["notes"]["rounding"]
    assert facts["steps"] == 4 and facts["weights"] == sum(l.weight.numel() for l in qm.layers().values())
    assert 0.0 < facts["codes_off_nearest"] < 0.5  # a choice between floor and ceiling, never further
    for layer in qm.layers().values():
        q = layer.weight_quantizer
        assert q.rounding is None
        assert torch.equal(q(layer.weight), layer.weight)  # on the grid: nearest rounding keeps the learned codes


@pytest.mark.slow
def test_rounding_that_learns_nothing_is_round_to_nearest():
    still = _tarq(lr_round=1e-12, round_weight=0.0, lr_act_round=0.0)
    plain = _tarq(rounding=False)
    assert still.manifest["notes"]["rounding"]["codes_off_nearest"] == 0.0
    x = torch.rand(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(still(x), plain(x))


def test_the_budget_takes_no_activation_more_than_one_bit_under_the_configs_by_default():
    """min_abits defaults to the config's activation bits minus one, edge_state to on from 6 activation bits; both
    are written into the manifest's config."""
    for bits, floor in ((4, 3), (6, 5), (2, 2)):
        options = TARQ(QuantConfig(method="tarq", wbits=bits, abits=bits)).config.options
        assert options["min_abits"] == floor and options["edge_state"] is (bits >= 6)
    assert TARQ(QuantConfig(method="tarq", wbits=6, abits=6, options={"min_abits": 3})).options["min_abits"] == 3
    with pytest.raises(VsrqError, match="min_abits"):
        TARQ(QuantConfig(method="tarq", wbits=6, abits=6, options={"min_abits": 1}))


def test_a_learned_bias_folds_into_the_conv_bias_and_moves_no_further_than_adam_can():
    """lr_bias: one bias per output channel trains with the rounding and is folded into the layer's bias (no extra
    parameter in the model); Adam moves a parameter by at most about its learning rate a step, so no bias moves
    by more than steps x lr x (1 - beta1) / sqrt(1 - beta2); without it every bias is the float model's."""
    quick = {"finetune": False, "round_epochs": 2}
    plain, biased = _tarq(**quick), _tarq(**quick, lr_bias=1e-3)
    steps = biased.manifest["notes"]["rounding"]["steps"]
    fp = dict(_loaded().model.named_parameters())
    moved = []
    for name, layer in biased.layers().items():
        assert layer.bias_align is None and "bias_align" not in dict(layer.named_parameters())
        reference = plain.layers()[name].bias
        if reference is None:
            assert layer.bias is None
            continue
        if name + ".bias" in fp:
            assert torch.equal(reference, fp[name + ".bias"])
        moved.append(float((layer.bias - reference).abs().max()))
    assert 0 < max(moved) <= steps * 1e-3 * 0.1 / (1 - 0.999) ** 0.5
    for bad in (-1.0, True, "1e-3"):
        with pytest.raises(VsrqError, match="lr_bias"):
            TARQ(QuantConfig(method="tarq", wbits=4, abits=4, options={"lr_bias": bad}))


def test_the_hosts_edge_and_state_layers_are_pinned_at_w8a8():
    """BasicVSR's trunk inputs (the LR-frame parts and the parts that read the propagated state) and the tail
    hold 8-bit weights and read 8-bit activations, every other layer stays at the config's 4 (activations 4 +-
    TS-LBA); the manifest's config holds the added rules (checkpoints rebuild the same layers); a user's rule
    for one of them wins; edge_state="weights" gives the state parts 8-bit weights and leaves their activations to
    the budget, false (at 4 bits the default) leaves them to the config; edge_wbits=null keeps the config's weight
    bits; both null pin nothing."""
    qm = _tarq(finetune=False, rounding=False, edge_state=True)
    bits = {n: l.input_quantizer.current_bits() for n, l in qm.layers().items()}
    ends = {"backward_trunk.main.0.parts.0", "forward_trunk.main.0.parts.0", "fusion.parts.0", "fusion.parts.1",
            "upconv1", "upconv2", "conv_hr", "conv_last"}
    state = {"backward_trunk.main.0.parts.1", "forward_trunk.main.0.parts.1"}
    edges = ends | state
    assert {n for n, b in bits.items() if b == 8} == edges
    assert all(3 <= b <= 5 for n, b in bits.items() if n not in edges)
    assert {n for n, l in qm.layers().items() if l.weight_quantizer.current_bits() == 8} == edges
    assert all(l.weight_quantizer.current_bits() == 4 for n, l in qm.layers().items() if n not in edges)
    rules = [r["pattern"] for r in qm.manifest["config"]["rules"]]
    assert rules == ["backward_trunk.main.0.parts.0", "forward_trunk.main.0.parts.0", "fusion", "upconv1",
                     "upconv2", "conv_hr", "conv_last", "backward_trunk.main.0.parts.1", "forward_trunk.main.0.parts.1"]
    weights = _tarq(finetune=False, rounding=False, edge_state="weights")
    assert {n for n, l in weights.layers().items() if l.input_quantizer.current_bits() == 8} == ends
    assert all(3 <= weights.layers()[n].input_quantizer.current_bits() <= 5 for n in state)
    assert {n for n, l in weights.layers().items() if l.weight_quantizer.current_bits() == 8} == edges
    stateless = _tarq(finetune=False, rounding=False)
    assert stateless.manifest["config"]["options"]["edge_state"] is False
    assert {n for n, l in stateless.layers().items() if l.input_quantizer.current_bits() == 8} == ends
    assert {n for n, l in stateless.layers().items() if l.weight_quantizer.current_bits() == 8} == ends
    for bad in ("no", 1, 0):
        with pytest.raises(VsrqError, match="edge_state"):
            _tarq(edge_state=bad)
    config = QuantConfig(method="tarq", wbits=4, abits=4, rules=(LayerRule("conv_last", abits=6),),
                         options={**SMALL, "finetune": False, "rounding": False})
    mine = quantize_model(_loaded(), config, _synthetic_calib(2, 3), **QUIET)
    assert mine.layers()["conv_last"].input_quantizer.current_bits() == 6
    assert mine.layers()["conv_hr"].input_quantizer.current_bits() == 8
    plain = _tarq(finetune=False, rounding=False, edge_abits=None, edge_wbits=None)
    assert max(l.input_quantizer.current_bits() for l in plain.layers().values()) <= 5
    assert plain.manifest["config"]["rules"] == []
    with pytest.raises(VsrqError, match="edge_abits"):
        _tarq(edge_abits=9)
    narrow = _tarq(finetune=False, rounding=False, edge_wbits=None)
    assert max(l.weight_quantizer.current_bits() for l in narrow.layers().values()) == 4
    assert {n for n, l in narrow.layers().items() if l.input_quantizer.current_bits() == 8} == ends


def test_edge_layers_of_each_recurrent_family_name_real_modules():
    """Split or not, every glob an edge rule uses names a module (plan_layers refuses one that matches none); the
    state parts exist only once split (unsplit, the conv that reads the state is an edge layer whole)."""
    for host, make in ((BasicVSRHost(), lambda: tiny_basicvsr(0, num_feat=8)),
                       (AnimeSRHost(), lambda: AnimeSR(num_feat=8, num_block=(2, 1, 1)))):
        for split in (False, True):
            model = make()
            if split:
                split_concat_inputs(model, host.concat_inputs(model))
            names = dict(model.named_modules())
            edges, state = host.edge_layers(model), host.state_layers(model)
            assert edges and all(e in names for e in edges + state), (host.name, split, edges, state)
            assert any("parts" in e for e in edges) == split
            trunks = 2 if getattr(model, "bidirectional", False) else 1  # AnimeSR: one cell
            assert len(state) == (trunks if split else 0), (host.name, split, state)
