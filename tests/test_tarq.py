"""TARQ: QBasicVSR's calibration with split concatenations, then rounding learned on whole windows."""

from __future__ import annotations

import pytest
import torch

from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.config import QuantConfig
from vsrq.methods.pipeline import quantize_model

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
