"""Configuration objects: frozen, validated, JSON round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vsrq.config import CalibConfig, LayerRule, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError


def test_quant_config_json_round_trip():
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=6, scope="pq", include=("a.*",), exclude=("b",),
                      rules=(LayerRule("c.*", wbits=8, abits=32), LayerRule("d", skip=True)), quantize_auxiliary=True,
                      split_concat=True,
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
    with pytest.raises(VsrqError, match="calibration degrade"):
        CalibConfig(degrade="jpeg")


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


def test_results_table_is_in_paper_order():
    """FP first; FQ before PQ, high bits before low, baselines before the method; ablations last."""
    from vsrq.benchmark import markdown_table

    def row(method: str, bits: int, scope: str | None, notes: str = "") -> dict:
        return dict(model="m", method=method, wbits=bits, abits=bits, scope=scope, dataset="vid4", degradation="bi",
                    frames="quick", psnr_y=20.0, ssim_y=0.5, fab=float(bits), size_mb=1.0, calib_s=1.0, notes=notes,
                    commit="abc", date="d")

    rows = [row("qbasicvsr", 4, "fq", "ablation: +FT"), row("qbasicvsr", 4, "pq"), row("minmax", 4, "fq"),
            row("qbasicvsr", 4, "fq"), row("minmax", 6, "fq"), row("fp", 32, None, "from ptq_vid4.json (1)")]
    body = [line.split(" | ")[:3] for line in markdown_table(rows, "t").splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert body == [["| fp", "32/32", "-"], ["| minmax", "6/6", "FQ"], ["| minmax", "4/4", "FQ"],
                    ["| qbasicvsr", "4/4", "FQ"], ["| qbasicvsr", "4/4", "PQ"], ["| qbasicvsr", "4/4", "FQ"]]
    assert markdown_table(rows, "t").splitlines()[-1].endswith("ablation: +FT |")
    rows[2]["date"], rows[4]["date"] = "2026-11-23", "2026-11-22"
    assert "2026-11-22 to d." in markdown_table(rows, "t").splitlines()[2]  # the dates the rows span
    assert "| data |" not in markdown_table(rows, "t")
    rows[0]["dataset"] = "bikes"  # rows on two datasets: each row says which
    table = markdown_table(rows, "t").splitlines()
    assert "| data |" in table[4] and table[-1].startswith("| m | bikes BI | qbasicvsr |")


def test_resume_keeps_every_dataset_and_has_tells_them_apart(tmp_path):
    """A sweep scored on two datasets resumes both; a row on one does not count as done on the other."""
    import json

    from vsrq.benchmark import Bench

    def row(dataset: str, model: str = "m", frames: str = "quick") -> dict:
        return dict(model=model, method="qbasicvsr", wbits=4, abits=4, scope="fq", dataset=dataset, degradation="bi",
                    frames=frames, psnr_y=20.0, ssim_y=0.5, fab=4.0, size_mb=1.0, calib_s=1.0, notes="x",
                    commit="abc", date="d", calibration_loss=0.5)

    rows = [row("vid4"), row("bikes"), row("vid4", model="other"), row("vid4", frames="full")]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    bench = Bench.__new__(Bench)  # only the names, the frames mode and the rows matter here
    bench.name, bench.model_name, bench.quick, bench.dataset, bench.rows = "t", "m", True, "vid4", []
    bench.resume(tmp_path)
    assert sorted(r.dataset for r in bench.rows) == ["bikes", "vid4"]
    assert bench.rows[0].extra["calibration_loss"] == 0.5
    assert bench.has("qbasicvsr", 4, 4, "fq", "x") and not bench.has("qbasicvsr", 4, 4, "fq", "y")
    bench.rows = [r for r in bench.rows if r.dataset == "bikes"]
    assert not bench.has("qbasicvsr", 4, 4, "fq", "x")
    assert bench.has("qbasicvsr", 4, 4, "fq", "x", dataset="bikes")
    bench.dataset = "bikes"
    assert bench.has("qbasicvsr", 4, 4, "fq", "x")


def test_markdown_table_shows_the_calibration_loss_when_rows_carry_it():
    from vsrq.benchmark import markdown_table

    row = dict(model="m", method="qbasicvsr", wbits=4, abits=4, scope="fq", dataset="vid4", degradation="bi",
               frames="quick", psnr_y=20.0, ssim_y=0.5, fab=4.0, size_mb=1.0, calib_s=1.0, notes="", commit="a", date="d")
    assert "calib loss" not in markdown_table([row], "t")
    lines = markdown_table([row, dict(row, calibration_loss=8.82581, notes="n")], "t").splitlines()
    assert "| calib loss |" in lines[4] and lines[-2].endswith("| - | 1 |  |") and lines[-1].endswith("| 8.8258 | 1 | n |")


def test_markdown_table_shows_calibration_peak_rss_when_rows_carry_it():
    from vsrq.benchmark import markdown_table

    row = dict(model="m", method="tarq", wbits=4, abits=4, scope="fq", dataset="vid4", degradation="bi",
               frames="quick", psnr_y=20.0, ssim_y=0.5, fab=4.0, size_mb=1.0, calib_s=1.0, notes="", commit="a", date="d")
    assert "peak RSS" not in markdown_table([row], "t")
    lines = markdown_table([row, dict(row, peak_rss_mb=2035.4, notes="n")], "t").splitlines()
    assert "| calib peak RSS (MB) | calib (s) |" in lines[4]
    assert lines[-2].endswith("| - | 1 |  |") and lines[-1].endswith("| 2035 | 1 | n |")


def test_every_frame_rows_get_their_own_table_and_survive_a_run_of_the_other_mode(tmp_path):
    """A results file holding quick and full rows shows one table each (full first); a full run's write keeps the
    quick rows, those copied from another benchmark included (it replaces only its own mode's copies)."""
    import json

    from vsrq.benchmark import Bench, Row, markdown_table

    base = dict(model="m", method="minmax", wbits=4, abits=4, scope="fq", dataset="vid4", degradation="bi",
                psnr_y=20.0, ssim_y=0.5, fab=4.0, size_mb=1.0, calib_s=1.0, commit="a", date="d")
    rows = [dict(base, frames="quick", notes="from ptq_vid4.json (a)"), dict(base, frames="full", notes="", psnr_y=21.0)]
    lines = markdown_table(rows, "t").splitlines()
    assert [i for i, line in enumerate(lines) if "frames;" in line] == [2, 8]
    assert "full frames" in lines[2] and "21.00" in lines[6] and "quick frames" in lines[8]
    (tmp_path / "t.json").write_text(json.dumps(rows[:1]))
    bench = Bench.__new__(Bench)
    bench.name, bench.quick = "t", False
    bench.rows = [Row(**{k: v for k, v in rows[1].items()})]
    bench.write(tmp_path)
    assert sorted(r["frames"] for r in json.loads((tmp_path / "t.json").read_text())) == ["full", "quick"]


def test_seeded_row_is_the_mean_and_sample_std_over_calibration_samples():
    """Each seed is calibrated once (cached seeds are not), and the row's spread is statistics.stdev's."""
    import statistics

    from vsrq.benchmark import Bench, Row, markdown_table
    from vsrq.config import QuantConfig

    psnr = {0: 24.90, 1: 24.81, 2: 25.02, 3: 24.77}
    bench = Bench.__new__(Bench)
    bench.name, bench.rows, bench.seed, bench._calib = "t", [], 0, None
    calls = []

    def quantized_row(config, method_label=None, notes=""):
        calls.append((bench.seed, config.seed))
        row = Row(model="m", method=config.method, wbits=4, abits=4, scope="fq", dataset="vid4", degradation="bi",
                  frames="quick", psnr_y=psnr[config.seed], ssim_y=0.7 + config.seed / 100, fab=4.0, size_mb=1.0,
                  calib_s=10.0 * (config.seed + 1), notes=notes, extra={"calib_sha256": f"h{config.seed}"})
        bench.rows.append(row)
        return row, None

    bench.quantized_row = quantized_row
    cached = {1: quantized_row(QuantConfig(seed=1))[0]}
    bench.rows, calls[:] = [], []
    row = bench.seeded_row(QuantConfig(method="minmax", wbits=4, abits=4), [0, 1, 2, 3], notes="4 samples",
                           done=cached)
    assert calls == [(0, 0), (2, 2), (3, 3)]  # bench and method both take the seed; seed 1 came from the cache
    assert bench.rows == [row] and row.notes == "4 samples"
    assert row.psnr_y == pytest.approx(statistics.mean(psnr.values()), abs=1e-4)
    assert row.extra["psnr_y_std"] == pytest.approx(statistics.stdev(psnr.values()), abs=1e-4)
    assert row.extra["seeds"] == [0, 1, 2, 3] and row.calib_s == 25.0
    assert [s["calib_sha256"] for s in row.extra["per_seed"]] == ["h0", "h1", "h2", "h3"]
    assert f"{row.psnr_y:.2f} ± {row.extra['psnr_y_std']:.2f}" in markdown_table([row.to_dict()], "t")
    with pytest.raises(ValueError, match="at least two seeds"):
        bench.seeded_row(QuantConfig(), [0])
