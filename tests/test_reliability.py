"""Reliability: content hashes that ignore only the clock, hostile checkpoints refused in one line, NaN or inf
in calibration named and never saved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import vsrq
from tests.conftest import smooth_frames
from tests.test_hosts import QUIET, tiny_animesr
from tests.test_quant_layers import _synthetic_calib
from vsrq import checkpoint
from vsrq.cli import main
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError

pytestmark = pytest.mark.fault


def test_content_hash_ignores_wall_clock_and_sees_everything_else(tmp_path: Path, capsys):
    qm = vsrq.quantize(tiny_animesr(), QuantConfig(method="minmax", wbits=4, abits=4), _synthetic_calib(2, 3), **QUIET)
    first = checkpoint.save(qm, tmp_path / "a.vsrq")
    qm.manifest = {**qm.manifest, "created": "2000-01-01T00:00:00+00:00",
                   "calibration": {**qm.manifest["calibration"], "seconds": 12345.0}}
    clocked = checkpoint.save(qm, tmp_path / "b.vsrq")
    assert first.read_bytes() != clocked.read_bytes()
    assert checkpoint.content_hash(first) == checkpoint.content_hash(clocked)
    qm.manifest = {**qm.manifest, "seed": 1}
    assert checkpoint.content_hash(checkpoint.save(qm, tmp_path / "c.vsrq")) != checkpoint.content_hash(first)
    qm.manifest = {**qm.manifest, "seed": 0}
    layer = next(iter(qm.layers().values()))
    with torch.no_grad():
        layer.bias[0] += 1e-3
    assert checkpoint.content_hash(checkpoint.save(qm, tmp_path / "d.vsrq")) != checkpoint.content_hash(first)
    assert main(["info", str(first)]) == 0
    assert f"content sha256 {checkpoint.content_hash(first)}" in capsys.readouterr().out


# --- hostile checkpoints ------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for any code a pickle can carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _frames(tmp_path: Path, size: int = 32) -> Path:
    from PIL import Image

    folder = tmp_path / "lr"
    folder.mkdir()
    for i, frame in enumerate(smooth_frames(2, size, size, seed=4)):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return folder


def _saved(tmp_path: Path) -> Path:
    qm = vsrq.quantize(tiny_animesr(), QuantConfig(method="quantvsr", wbits=4, abits=4,
                                                   options={"branch": "svd", "fixed_rank": 8, "lba": False}),
                       _synthetic_calib(2, 3), **QUIET)
    return checkpoint.save(qm, tmp_path / "good.vsrq")


def _rewrite(src: Path, dst: Path, edit_tensors=None, edit_manifest=None) -> Path:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_manifest:
        manifest = json.loads(meta[checkpoint.MANIFEST_KEY])
        edit_manifest(manifest)
        meta[checkpoint.MANIFEST_KEY] = json.dumps(manifest)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_a_pickled_callable_is_refused_never_run(tmp_path: Path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, evil)
    out = tmp_path / "out"
    assert main(["upscale", str(_frames(tmp_path)), str(out), "--model", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vsrq: error: {evil}: cannot read as a PyTorch checkpoint") and err.count("\n") == 1
    assert not marker.exists() and not out.exists()


def test_tampered_vsrq_files_are_one_clear_error(tmp_path: Path, capsys):
    good = _saved(tmp_path)
    layer = next(k for k, e in checkpoint.read_manifest(good)["layers"].items() if e["rank"])
    prefix = f"base.{layer}."

    def swap_shapes(t: dict) -> None:
        t[prefix + "lowrank_up"], t[prefix + "lowrank_down"] = t[prefix + "lowrank_down"], t[prefix + "lowrank_up"]

    def more_bits(m: dict) -> None:
        m["layers"][layer]["weight"]["bits"] = 8

    def wider(m: dict) -> None:
        m["layers"][layer]["weight_shape"][0] *= 2

    def drop(t: dict) -> None:
        del t[prefix + "weight_scale"]

    raw = good.read_bytes()
    truncated = tmp_path / "truncated.vsrq"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    huge = tmp_path / "huge.vsrq"  # a header that claims 2**40 bytes
    huge.write_bytes((1 << 40).to_bytes(8, "little") + raw[8:])
    cases = {
        "swapped": _rewrite(good, tmp_path / "swapped.vsrq", edit_tensors=swap_shapes),
        "bits": _rewrite(good, tmp_path / "bits.vsrq", edit_manifest=more_bits),
        "shape": _rewrite(good, tmp_path / "shape.vsrq", edit_manifest=wider),
        "missing": _rewrite(good, tmp_path / "missing.vsrq", edit_tensors=drop),
        "truncated": truncated,
        "huge": huge,
    }
    frames = _frames(tmp_path)
    for case, path in cases.items():
        out = tmp_path / f"out-{case}"
        assert main(["upscale", str(frames), str(out), "--model", str(path)]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith(f"vsrq: error: {path}") and err.count("\n") == 1, (case, err)
        assert not out.exists(), case


# --- NaN and inf in calibration -----------------------------------------------------------------------------------


def test_nan_in_a_calibration_clip_is_named_before_any_work(tmp_path: Path):
    calib = _synthetic_calib(2, 3)
    calib.clips[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(VsrqError, match=rf"^calibration item {re.escape(calib.names[1])} holds NaN or inf"):
        vsrq.quantize(tiny_animesr(), QuantConfig(method="minmax"), calib, **QUIET)


def test_a_float_model_that_overflows_names_the_layer():
    model = tiny_animesr()
    with torch.no_grad():
        model.recurrent_cell.conv_s1_first[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(VsrqError, match=r"^layer recurrent_cell\.conv_s1_first\.0: its weights hold NaN or inf"):
        vsrq.quantize(model, QuantConfig(method="minmax"), _synthetic_calib(2, 3), **QUIET)


def test_a_diverging_training_stage_is_undone_never_saved(tmp_path: Path):
    from tests.test_hosts import captured, tiny_denoiser

    lines: list[str] = []
    config = QuantConfig(method="quantvsr", wbits=4, abits=4,
                         options={"branch": "none", "lba": True, "lr": 1e30, "epochs": 1, "batch": 1})
    qm = vsrq.quantize(tiny_denoiser(), config, captured(2), log=lines.append, show_progress=False)
    stage = qm.manifest["notes"]["stages"][-1]
    assert stage["stage"] == "bias-alignment" and stage.get("diverged"), stage
    assert any("diverged" in line and "undone" in line for line in lines)
    assert all(torch.isfinite(t).all() for t in qm.state_dict().values() if t.is_floating_point())
    plain = vsrq.quantize(tiny_denoiser(), QuantConfig(method="quantvsr", wbits=4, abits=4,
                                                       options={"branch": "none", "lba": False}), captured(2), **QUIET)
    for name, layer in qm.layers().items():  # undone: the biases are those of the run without the stage
        b, ref = layer.bias, plain.layers()[name].bias
        assert (b is None and ref is None) or torch.equal(b, ref if ref is not None else torch.zeros_like(b)), name


def test_a_non_finite_layer_after_calibration_is_named():
    from vsrq.methods.pipeline import check_finite_layers

    qm = vsrq.quantize(tiny_animesr(), QuantConfig(method="minmax"), _synthetic_calib(2, 3), **QUIET)
    check_finite_layers(qm.layers())  # a good calibration passes
    name, layer = next(iter(qm.layers().items()))
    layer.input_quantizer.upper.data.fill_(float("nan"))
    with pytest.raises(VsrqError, match=rf"^calibration gave layer {re.escape(name)} a non-finite "
                                        r"input_quantizer\.upper .*no checkpoint written$"):
        check_finite_layers(qm.layers())


# --- kills mid-write ----------------------------------------------------------------------------------------------

WRITER = r"""
import sys, time
from pathlib import Path
from vsrq.data.frames import atomic_output
target, tag = Path(sys.argv[1]), sys.argv[2]
print("start", flush=True)
with atomic_output(target, overwrite=True) as tmp:
    tmp.mkdir()
    for i in range(40):
        (tmp / f"{i:03d}.txt").write_text(tag)
        time.sleep(0.005)
"""


def _state(target: Path) -> str:
    """'none', or the one tag every one of the 40 files holds; anything else is a partial output."""
    if not target.exists():
        return "none"
    tags = {p.read_text() for p in target.iterdir()}
    assert len(list(target.iterdir())) == 40 and len(tags) == 1, (len(list(target.iterdir())), tags)
    return tags.pop()


def test_a_folder_killed_at_any_point_is_the_old_one_the_new_one_or_nothing(tmp_path: Path):
    import random
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "out"
    subprocess.run([sys.executable, "-c", WRITER, str(target), "old"], check=True)
    rng = random.Random(27)
    seen = set()
    for i in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), f"new{i}"], stdout=subprocess.PIPE)
        proc.stdout.readline()  # the writer is past its imports
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(target)
        assert state in ("none", "old", f"new{i}") or state.startswith("new"), state
        seen.add(state if state in ("none", "old") else "new")
        if state == "none":  # killed between the two renames: restore a previous output for the next round
            subprocess.run([sys.executable, "-c", WRITER, str(target), "old"], check=True)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out"]
    subprocess.run([sys.executable, "-c", WRITER, str(target), "last"], check=True)
    assert _state(target) == "last"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], (leftovers, list(tmp_path.iterdir()))
    assert "old" in seen or "new" in seen


def test_a_killed_upscale_leaves_no_partial_output_and_a_rerun_succeeds(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "tiny.pth"
    from tests.conftest import tiny_basicvsr

    torch.save({"params": tiny_basicvsr().state_dict()}, ckpt)
    frames = _frames(tmp_path, 64)
    out = tmp_path / "sr"
    cmd = [sys.executable, "-m", "vsrq.cli", "upscale", str(frames), str(out), "--model", str(ckpt), "--overwrite"]
    for delay in (0.5, 1.5, 3.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr", "sr", "tiny.pth"]  # leftovers cleaned
