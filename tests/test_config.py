"""Configuration objects: frozen, validated, JSON round trip."""

from __future__ import annotations

import dataclasses

import pytest

from vsrq.config import CalibConfig, LayerRule, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError


def test_quant_config_json_round_trip():
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=6, scope="pq", include=("a.*",), exclude=("b",),
                      rules=(LayerRule("c.*", wbits=8, abits=32), LayerRule("d", skip=True)), quantize_spynet=True,
                      calib=CalibConfig("clips/", 3, 5, 96, "bd"), seed=7, options={"fab_budget": 4.0})
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    spec = QuantizerSpec(bits=3, symmetric=True, granularity="group", group_size=16, observer="omse")
    assert QuantizerSpec.from_dict(spec.to_dict()) == spec


def test_configs_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().wbits = 4  # type: ignore[misc]
    with pytest.raises(VsrqError, match="unknown scope"):
        QuantConfig(scope="half")
    with pytest.raises(VsrqError, match="abits=1"):
        QuantConfig(abits=1)
    with pytest.raises(VsrqError, match="must be 2..8 or 32"):
        LayerRule("x", wbits=16)
    with pytest.raises(VsrqError, match="unknown observer"):
        QuantizerSpec(observer="magic")
