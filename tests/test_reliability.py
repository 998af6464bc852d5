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
from vsrq.errors import VsrqError, one_line

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


# --- every writer killed by SIGKILL, and a full disk ---------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "vsrq.cli", "--quiet", *args]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, tuple[list[str], Path, callable]]:
    """Each writing command of the CLI on a tiny BasicVSR (inputs made once): (argv with ``{out}`` for the
    output, the output's suffix, how to check that an output is whole: it returns what the output holds, so
    two whole outputs compare)."""
    import json

    from tests.conftest import tiny_basicvsr, write_clip
    from vsrq.data.video import iter_video
    from vsrq.runtime.ort import OrtBasicVSR

    root = tmp_path_factory.mktemp("jobs")
    torch.save({"params": tiny_basicvsr().state_dict()}, root / "tiny.pth")
    write_clip(root / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    lr = write_clip(root / "lr", smooth_frames(3, 64, 64, seed=2))
    write_clip(root / "gt", smooth_frames(3, 64, 64, seed=3))
    quantize = ["quantize", "--model", str(root / "tiny.pth"), "--calib", str(root / "calib"), "--calib-clips", "1",
                "--calib-frames", "3", "--overwrite", "-o", "{out}"]
    ckpt = root / "q.vsrq"
    assert main(["--quiet", *[a.replace("{out}", str(ckpt)) for a in quantize]]) == 0

    def frames(p: Path) -> tuple:
        return tuple((f.name, f.read_bytes()) for f in sorted(p.iterdir()))

    return {
        "quantize": (quantize, ".vsrq", checkpoint.content_hash),
        "export": (["export", str(ckpt), "--size", "64x64", "--overwrite", "-o", "{out}"], ".onnx",
                   lambda p: (OrtBasicVSR(p).lr_size, p.read_bytes())),
        "upscale": (["upscale", str(lr), "{out}", "--model", str(ckpt), "--overwrite"], "", frames),
        "upscale-mp4": (["upscale", str(lr), "{out}", "--model", str(ckpt), "--overwrite"], ".mp4",
                        lambda p: [f.shape for f in iter_video(p)]),
        "eval": (["eval", str(root / "gt"), str(root / "gt"), "--json", "{out}"], ".json",
                 lambda p: json.loads(p.read_text())["mean"]),
    }


def _argv(job: tuple, target: Path) -> list[str]:
    return _cli(*[a.replace("{out}", str(target)) for a in job[0]])


@pytest.mark.parametrize("name", ["quantize", "export", "upscale", "upscale-mp4", "eval"])
def test_every_writer_killed_at_seeded_points_leaves_the_old_output_whole(jobs, name: str, tmp_path: Path):
    """SIGKILL at seeded random points of a whole CLI run (past its imports): the previous output stays whole
    or the new one is complete; a rerun succeeds and removes what the killed runs left."""
    import random
    import signal
    import subprocess
    import time

    job = jobs[name]
    target = tmp_path / f"out{job[1]}"
    start = time.perf_counter()
    subprocess.run(_argv(job, target), check=True, capture_output=True)
    took = time.perf_counter() - start
    whole = job[2](target)
    rng = random.Random(27)
    for delay in sorted(rng.uniform(0.5, 1.0) * took for _ in range(3)):
        proc = subprocess.Popen(_argv(job, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():  # a directory swap may leave nothing; anything there is whole
            assert job[2](target) == whole
    subprocess.run(_argv(job, target), check=True, capture_output=True)
    assert job[2](target) == whole
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([target.name] + (["out.backward.onnx", "out.flow.onnx"] if name == "export" else [])), left


def _small_disk(folder: Path, free_pages: int):
    """A tmpfs at ``folder`` filled to ``free_pages`` free 4 KiB pages (needs the right to mount: root, as in
    CI's containers); None where mounting is refused, and the caller limits file sizes instead."""
    import os
    import shutil
    import subprocess

    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        return None
    st = os.statvfs(folder)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * ((st.f_bavail - free_pages) * st.f_frsize))
    return folder


@pytest.mark.parametrize("name", ["quantize", "export", "upscale", "upscale-mp4", "eval"])
def test_a_full_disk_mid_write_is_one_line_and_leaves_nothing(jobs, name: str, tmp_path: Path):
    """Each writer on a disk that fills during the write (a size-limited tmpfs; where mounting is not allowed,
    a per-file size limit, EFBIG): one line, exit 2, no output and no temporary files left."""
    import resource
    import subprocess

    job = jobs[name]
    disk = _small_disk(tmp_path / "disk", free_pages=0 if name == "eval" else 1)
    limit = None if disk is not None else (64 if name == "eval" else 4096)
    target = (disk or tmp_path / "disk") / f"out{job[1]}"
    try:
        res = subprocess.run(_argv(job, target), capture_output=True, text=True, preexec_fn=None if limit is None else
                             lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        left = sorted(p.name for p in target.parent.iterdir())
    finally:
        if disk is not None:
            subprocess.run(["umount", str(disk)], check=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"vsrq: error: writing {target}: "), res.stderr
    assert "; nothing was written: free some space" in res.stderr
    assert left == (["filler"] if disk is not None else []), left


def test_an_output_under_a_file_is_one_line(tmp_path: Path, capsys):
    from tests.conftest import write_clip

    write_clip(tmp_path / "gt", smooth_frames(2, 32, 32))
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "sub" / "r.json"
    assert main(["--quiet", "eval", str(tmp_path / "gt"), str(tmp_path / "gt"), "--json", str(target)]) == 2
    assert capsys.readouterr().err == f"vsrq: error: cannot write {target}: {tmp_path / 'file'} is a file, not a folder\n"


def test_a_failed_batch_item_reads_as_one_line_whatever_the_exception():
    """A batch job records each failed video's error as one line; an OSError without a message once crashed that
    (``str(exc).splitlines()[0]`` of an empty string)."""
    assert one_line(VsrqError("clip.mp4: no frames\nsecond line")) == "clip.mp4: no frames"
    assert one_line(OSError()) == "OSError"
    assert one_line(FileNotFoundError(2, "No such file or directory", "a.mp4")) == \
        "[Errno 2] No such file or directory: 'a.mp4'"
    assert one_line(RuntimeError("\n  kernel failed  \ntraceback...")) == "RuntimeError: kernel failed"
    assert one_line(ValueError()) == "ValueError"
