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


def test_bench_write_merges_with_rows_written_meanwhile(tmp_path):
    """Two benchmark processes writing one results file keep each other's rows."""
    import json

    from vsrq.benchmark import Bench, Row

    def row(method: str, psnr: float, notes: str = "") -> Row:
        return Row(model="m", method=method, wbits=4, abits=4, scope="fq", dataset="vid4", degradation="bi",
                   frames="quick", psnr_y=psnr, ssim_y=0.5, fab=4.0, size_mb=1.0, calib_s=1.0, notes=notes,
                   commit="abc", date="d")

    a, b = (Bench("t", "basicvsr-vimeo-bi", "vid4", "bi", True) for _ in range(2))
    a.rows, b.rows = [row("minmax", 20.0), row("fp", 30.0, "from other.json (1)")], [row("omse", 21.0)]
    a.write(tmp_path)
    b.write(tmp_path)  # b never saw a's rows: they stay (a copied row is its writer's alone)
    a.rows[0] = row("minmax", 22.0)
    a.write(tmp_path)
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [(r["method"], r["psnr_y"]) for r in rows] == [("minmax", 22.0), ("omse", 21.0), ("fp", 30.0)]
