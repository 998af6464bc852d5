"""The command line end to end on a tiny checkpoint: degrade, upscale, eval, and error lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import smooth_frames, tiny_basicvsr, write_clip
from vsrq.cli import _parse_options, main
from vsrq.methods import get_method


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save({"params": tiny_basicvsr().state_dict()}, path)
    return path


def test_degrade_upscale_eval(tmp_path: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture):
    write_clip(tmp_path / "GT" / "c1", smooth_frames(3, 256, 256))
    assert main(["degrade", str(tmp_path / "GT"), str(tmp_path / "LR"), "--mode", "bd"]) == 0
    assert main(["upscale", str(tmp_path / "LR"), str(tmp_path / "SR"), "--model", str(tiny_ckpt)]) == 0
    assert main(["eval", str(tmp_path / "SR"), str(tmp_path / "GT"), "--y", "--json", str(tmp_path / "r.json"),
                 "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "| c1 | 3 |" in out and "**mean**" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["channel"] == "y" and len(report["clips"][0]["frames"]["psnr"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["upscale", "{tmp}/nothing", "{tmp}/o", "--model", "{ckpt}"], "no such file or folder"),
        (["upscale", "{tmp}/lr", "{tmp}/o", "--model", "basicvsr-nope"], "unknown model 'basicvsr-nope'"),
        (["upscale", "{tmp}/lr", "{tmp}/lr", "--model", "{ckpt}"], "exists; pass --overwrite"),
        (["eval", "{tmp}/lr", "{tmp}/nothing"], "no such file or folder"),
        (["upscale", "{tmp}/lr", "{tmp}/o", "--model", "{ckpt}", "--device", "tpu"], "unknown device 'tpu'"),
        (["quantize", "--model", "{tmp}/nothing.pth", "--device", "tpu", "-o", "{tmp}/o"], "not a file"),
        (["quantize", "--model", "basicvsr-vimeo-bi", "--calib", "{tmp}/lr", "--device", "tpu", "-o", "{tmp}/o"],
         "unknown device 'tpu'"),
        (["upscale", "{tmp}/lr", "{tmp}/o", "--model", "{ckpt}", "--device", "cuda", "--runtime", "onnxruntime"],
         "cuda" if not torch.cuda.is_available() else "runs on the CPU"),
    ],
)
@pytest.mark.fault
def test_errors_are_one_line_and_exit_2(tmp_path: Path, tiny_ckpt: Path, capsys, args, message):
    write_clip(tmp_path / "lr", smooth_frames(2, 64, 64))
    argv = [a.format(tmp=tmp_path, ckpt=tiny_ckpt) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsrq: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_upscale_passes_the_torch_int8_float_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vsrq import api

    seen: dict = {}
    monkeypatch.setattr(api, "upscale", lambda *a, **kw: seen.update(kw) or [])
    assert main(["upscale", "lr", str(tmp_path / "o"), "--model", "q.vsrq", "--runtime", "torch-int8"]) == 0
    assert seen["runtime"] == "torch-int8" and seen["float_dtype"] == "auto"
    assert main(["upscale", "lr", str(tmp_path / "o"), "--model", "q.vsrq", "--float-dtype", "float32"]) == 0
    assert seen["float_dtype"] == "float32"


def test_upscale_batch_passes_the_torch_int8_float_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vsrq import batch

    seen: dict = {}
    monkeypatch.setattr(batch, "upscale_batch", lambda *a, **kw: seen.update(kw) or batch.Summary(workers=1))
    args = ["upscale-batch", "lib", str(tmp_path / "o"), "--model", "q.vsrq", "--runtime", "torch-int8"]
    assert main(args) == 0 and seen["float_dtype"] == "auto"
    assert main([*args, "--float-dtype", "bfloat16"]) == 0 and seen["float_dtype"] == "bfloat16"


def test_checkpoint_of_another_architecture(tmp_path: Path, capsys):
    torch.save({"params": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "lin.pth")
    write_clip(tmp_path / "lr", smooth_frames(2, 64, 64))
    assert main(["upscale", str(tmp_path / "lr"), str(tmp_path / "o"), "--model", str(tmp_path / "lin.pth")]) == 2
    assert "fit no known model family" in capsys.readouterr().err


def test_methods_lists_options_that_parse_back_to_the_defaults(capsys):
    assert main(["methods", "qbasicvsr"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pairs = [line.strip() for line in lines if line.startswith("  ")]
    assert 'omse_refresh="auto"' in pairs and "fab_budget=null" in pairs
    assert _parse_options(pairs) == get_method("qbasicvsr").default_options
    assert main(["methods", "minmax"]) == 0 and capsys.readouterr().out.splitlines()[-1] == "no options"
    assert main(["methods", "nosuch"]) == 2 and "unknown method 'nosuch'" in capsys.readouterr().err


def test_progress_in_a_log_is_lines_at_start_every_interval_and_end():
    """Without a terminal, progress comes as plain lines a log keeps: start, every `every` seconds, the end."""
    import io

    from vsrq.progress import LineProgress

    now = [0.0]
    out = io.StringIO()
    with LineProgress(10, "calibrate", "batch", every=30.0, stream=out, clock=lambda: now[0]) as bar:
        for _ in range(10):
            now[0] += 10.0
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "vsrq: calibrate: started, 10 batch"
    assert lines[1:4] == ["vsrq: calibrate: 3/10 batch, 30 s, ~70 s left", "vsrq: calibrate: 6/10 batch, 60 s, ~40 s left",
                          "vsrq: calibrate: 9/10 batch, 90 s, ~10 s left"]
    assert lines[4] == "vsrq: calibrate: done, 10/10 batch, 100 s" and len(lines) == 5


def test_redirected_calibration_writes_progress_lines_and_quiet_silences_them(tmp_path, capsys):
    """`vsrq quantize > log 2>&1` shows progress lines; `vsrq --quiet` shows none."""
    import subprocess
    import sys

    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64))
    args = ["quantize", "--model", "basicvsr-vimeo-bi", "--method", "minmax", "--wbits", "8", "--abits", "8",
            "--calib", str(tmp_path / "calib"), "--calib-clips", "1", "--calib-frames", "2", "--calib-crop", "64"]
    env = {k: v for k, v in os.environ.items() if k != "VSRQ_PROGRESS"}
    with open(tmp_path / "log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "vsrq.cli", *args, "-o", str(tmp_path / "a.vsrq")], stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    text = (tmp_path / "log").read_text()
    if done.returncode != 0 and "not found" in text:
        pytest.skip("official BasicVSR weights not installed")
    assert done.returncode == 0, text
    assert "vsrq: observe: started" in text and "vsrq: observe: done," in text and "wrote" in text
    write_clip(tmp_path / "gt", smooth_frames(2, 16, 16))
    assert main(["eval", str(tmp_path / "gt"), str(tmp_path / "gt")]) == 0
    assert "vsrq: eval: started" in capsys.readouterr().err  # pytest's stderr is no terminal: lines
    assert main(["--quiet", "eval", str(tmp_path / "gt"), str(tmp_path / "gt")]) == 0
    assert "vsrq:" not in capsys.readouterr().err
