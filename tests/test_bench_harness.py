"""bench/harness.py, the project's sweep tooling outside the package: git stamping and merging rows into one
results file from several processes at once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _write_rows(results_dir: str, writer: int) -> None:
    from harness import Bench

    from vsrq.benchmark import Row

    bench = Bench.__new__(Bench)  # only name and rows matter for writing
    bench.name, bench.rows = "t", []
    for i in range(15):
        bench.rows.append(Row(model="m", method=f"w{writer}-{i}", wbits=4, abits=4, scope="fq", dataset="vid4",
                              degradation="bi", frames="quick", psnr_y=20.0, ssim_y=0.5, fab=4.0, size_mb=1.0,
                              calib_s=1.0))
        bench.write(Path(results_dir))


def test_concurrent_benchmark_writers_lose_no_rows(tmp_path):
    """Four processes merging rows into one results file at once: every row survives."""
    import json
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_rows, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    methods = {r["method"] for r in json.loads((tmp_path / "t.json").read_text())}
    assert methods == {f"w{w}-{i}" for w in range(4) for i in range(15)}


def test_git_commit_is_dirty_for_code_not_for_results_or_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import subprocess

    from harness import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    for name in ("code.py", "README.md", "bench/results/x.json"):
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.chdir(tmp_path)
    clean = git_commit()
    assert len(clean) >= 7 and not clean.endswith("+dirty")
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "bench/results/x.json").write_text("b\n")
    assert git_commit() == clean
    (tmp_path / "code.py").write_text("b\n")
    assert git_commit() == clean + "+dirty"


def test_a_gpu_calibrated_checkpoint_is_scored_on_the_cpu_and_its_row_names_the_gpu(tmp_path, monkeypatch):
    """The cache key leaves out the device (calibrate on a lent GPU, score where the test data is); the row says
    which GPU calibrated it and that the CPU scored it. The benchmark's own clips are never read here."""
    import numpy as np

    import harness
    from harness import Bench

    from tests.test_quant_layers import _loaded, _synthetic_calib
    from vsrq.config import QuantConfig
    from vsrq.data.datasets import PairedClip
    from vsrq.methods.pipeline import quantize_model

    monkeypatch.setattr(harness, "CHECKPOINTS", tmp_path)
    cpu, gpu = (Bench("t", "basicvsr-vimeo-bi", "no-such-dataset", "bi", True, device=d) for d in ("cpu", "cuda"))
    config = QuantConfig(method="minmax", wbits=4, abits=4, scope="fq")
    for b in (cpu, gpu):
        b._calib = _synthetic_calib()
    assert cpu.checkpoint_path(config) == gpu.checkpoint_path(config)

    qm = quantize_model(_loaded(), config, _synthetic_calib(), log=lambda s: None, show_progress=False)
    qm.manifest["notes"]["calibrated_on"] = "NVIDIA H200"
    gt = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    cpu.clips = [PairedClip("c", gt, gt[:, ::4, ::4].copy())]
    row = cpu.row(qm, "minmax", 4, 4, "fq", 1.0)
    assert row.extra["device"] == "NVIDIA H200" and row.extra["scored_on"] == "cpu"
    plain = quantize_model(_loaded(), config, _synthetic_calib(), log=lambda s: None, show_progress=False)
    assert "device" not in cpu.row(plain, "minmax", 4, 4, "fq", 1.0).extra


def test_rescoring_a_kept_checkpoint_scores_it_as_loaded_and_names_its_calibration(tmp_path):
    """bench/rescore.py: the row is the saved model's score on the benchmark's clips (computed here directly),
    with the calibration time and commit of the facts file kept beside the checkpoint."""
    import json

    import numpy as np
    from harness import Bench
    from rescore import rescore

    from tests.test_quant_layers import _loaded, _synthetic_calib
    from vsrq import checkpoint
    from vsrq.benchmark import super_resolve
    from vsrq.config import QuantConfig
    from vsrq.data.datasets import PairedClip
    from vsrq.methods.pipeline import quantize_model
    from vsrq.metrics.report import score_clip

    qm = quantize_model(_loaded(), QuantConfig(method="minmax", wbits=4, abits=4, scope="fq"), _synthetic_calib(),
                        log=lambda s: None, show_progress=False)
    path = checkpoint.save(qm, tmp_path / "m.vsrq")
    path.with_suffix(".json").write_text(json.dumps({"calib_s": 12.5, "commit": "abc1234", "peak_rss_mb": 1}))
    gt = np.random.default_rng(1).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    clip = PairedClip("c", gt, gt[:, ::4, ::4].copy())
    bench = Bench("t", "basicvsr-vimeo-bi", "no-such-dataset", "bi", True)
    bench.clips = [clip]
    row = rescore(bench, path)
    direct = score_clip("c", list(super_resolve(checkpoint.load(path), clip.lr)), list(gt), y=True, crop=0)
    assert row.psnr_y == round(direct.mean_psnr, 4) and (row.wbits, row.abits, row.method) == (4, 4, "minmax")
    assert row.calib_s == 12.5 and "m.vsrq" in row.notes and "abc1234" in row.notes


def test_a_deploy_run_replaces_earlier_rows_of_its_own_cpu_only():
    """Speed ratios differ between machines: a backend re-timed on one CPU must not drop another CPU's run."""
    from deploy import earlier_runs

    def run(commit: str, cpu: str | None, backends: tuple[str, ...]) -> list[dict]:
        rows = [{"backend": b, "lr_size": "180x320", "commit": commit, "date": "d", "ms_per_frame": 1.0}
                for b in ("torch-fp32", *backends)]
        return [{**r, "cpu": cpu} for r in rows] if cpu else rows

    old = run("a", None, ("pt-int8-w8a8", "ort-w8a8")) + run("b", "amx", ("pt-int8-w4a8",))
    kept = earlier_runs(old, run("c", "amx", ("pt-int8-w8a8", "pt-int8-w4a8")))
    assert {(r["commit"], r["backend"]) for r in kept} == {("a", "torch-fp32"), ("a", "pt-int8-w8a8"),
                                                           ("a", "ort-w8a8")}


def test_putting_every_part_back_to_float_gives_the_float_model_and_a_kept_group_keeps_its_codes(tmp_path):
    """bench/loss_split.py: with every activation and weight put back (a split conv's parts take their slices of
    the float weight), a saved W4A4 checkpoint computes what the float model computes; a group whose weights stay
    quantized keeps the checkpoint's dequantized weight exactly."""
    import torch
    from loss_split import members, put_back, selection

    from tests.test_quant_layers import _loaded, _synthetic_calib
    from vsrq import checkpoint
    from vsrq.config import QuantConfig
    from vsrq.methods.pipeline import quantize_model
    from vsrq.quant.layers import QuantLayer

    loaded = _loaded()
    cfg = QuantConfig(method="minmax", wbits=4, abits=4, scope="fq", split_concat=True)
    path = checkpoint.save(quantize_model(loaded, cfg, _synthetic_calib(), log=lambda s: None, show_progress=False),
                           tmp_path / "m.vsrq")
    x = _synthetic_calib(1).clips[0][None]
    with torch.no_grad():
        fp = loaded.model(x)
        qm = checkpoint.load(path)
        quantized = qm(x)
        layers = {n: m for n, m in qm.base.named_modules() if isinstance(m, QuantLayer)}
        assert len(members(layers, "features")) == 2 and len(members(layers, "all")) == len(layers)
        put_back(qm, loaded.model, *selection("weights only", "all", layers))  # weights quantized, acts float
        assert not torch.allclose(qm(x), fp, atol=1e-3)
        qm = checkpoint.load(path)
        layers = {n: m for n, m in qm.base.named_modules() if isinstance(m, QuantLayer)}
        kept = layers["forward_trunk.main.0.parts.1"].quantized_weight().clone()
        put_back(qm, loaded.model, *selection("weights only", "features", layers))
        assert torch.equal(layers["forward_trunk.main.0.parts.1"].quantized_weight(), kept)
        assert layers["forward_trunk.main.0.parts.1"].input_quantizer is None
        put_back(qm, loaded.model, *selection("weights float", "", layers))
        assert torch.allclose(qm(x), fp, atol=1e-5) and not torch.allclose(quantized, fp, atol=1e-3)


def test_drift_scores_each_half_alone_and_its_gaps_are_per_frame_differences():
    """bench/drift.py: the halves are the clip cut at K; a per-frame row holds what score_clip gives each frame of
    the model's output on that piece alone; a model's gaps are its per-frame PSNR minus FP's, averaged by half."""
    from dataclasses import replace

    import numpy as np
    from drift import gaps, labels, pieces
    from harness import Bench

    from tests.test_quant_layers import _loaded
    from vsrq.benchmark import super_resolve
    from vsrq.data.datasets import PairedClip
    from vsrq.metrics.report import score_clip

    rng = np.random.default_rng(3)
    gt = rng.integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    parts = pieces(PairedClip("c", gt, gt[:, ::4, ::4].copy()), 2)
    names = list(parts)
    assert names == ["vid4 c", "vid4 c[0:2]", "vid4 c[2:5]"]
    assert np.array_equal(np.concatenate([parts[names[1]].gt, parts[names[2]].gt]), gt)
    bench = Bench("t", "basicvsr-vimeo-bi", "no-such-dataset", "bi", False)
    model = _loaded().model
    rows = {}
    for name, piece in parts.items():
        bench.clips = [piece]
        rows[name] = bench.row(model, "fp", 32, 32, None, None, per_frame=True)
        direct = score_clip(piece.name, list(super_resolve(model, piece.lr)), list(piece.gt), y=True, crop=0)
        assert rows[name].extra["clips"][piece.name]["psnr_y_frames"] == [round(v, 4) for v in direct.psnr]
    # the whole run and the second half alone differ: the forward recurrence starts afresh at the cut
    whole, second = (rows[n].extra["clips"][c]["psnr_y_frames"] for n, c in ((names[0], "c"), (names[2], "c[2:5]")))
    assert whole[2:] != second
    shifted = {}  # a "model" losing 0.5 dB more each frame of the whole run, 0.25 more each frame of a half alone
    for name, row in rows.items():
        (frames,) = (e["psnr_y_frames"] for e in row.extra["clips"].values())
        step = -0.5 if name == names[0] else -0.25
        lower = [v + step * i for i, v in enumerate(frames)]
        shifted[name] = replace(row, extra={"clips": {"x": {"psnr_y_frames": lower}}})
    summary = gaps(rows, shifted, 2)
    assert np.allclose(list(summary.values()), [-0.25, -0.125, -1.5, -0.25])
    manifest = {"config": {"options": {"a": 1, "b": 2}, "calib": {"clips": 12, "frames": 8}}}
    other = {"config": {"options": {"a": 1, "b": 3}, "calib": {"clips": 6, "frames": 16}}}
    assert list(labels({Path("x.vsrq"): manifest, Path("y.vsrq"): other}).values()) == ["b 2, windows 12x8",
                                                                                         "b 3, windows 6x16"]


def test_every_reconstruct_row_has_its_own_label_and_notes_and_builds_a_valid_config():
    """A row is found again by its (method, bits, scope, notes) key and picked by its label: two rows sharing
    either would overwrite or shadow each other in the results file."""
    from reconstruct_vid4 import bit_pair, plan, row_config

    rows = plan()
    assert len({r.label for r in rows}) == len(rows)
    assert len({(r.method, bit_pair(r.bits), r.scope, r.notes) for r in rows}) == len(rows)
    for r in rows:
        config = row_config(r.method, r.bits, r.options, r.rules, scope=r.scope, equalize=r.equalize)
        assert (config.wbits, config.abits, config.scope) == (*bit_pair(r.bits), r.scope)
        assert r.scope == "pq" if r.label.endswith(" pq") else r.scope == "fq"
