"""The library job on a local Ray instance (2 CPUs, a tiny BasicVSR): outputs equal `vsrq upscale`'s bit for bit,
a corrupt video is recorded and leaves nothing, reruns skip what is done and redo what changed, a worker
process killed mid-video has its video retried."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import vsrq
from tests.conftest import audio_packets, smooth_frames, tiny_basicvsr, write_clip, write_video_with_audio
from vsrq.batch import STATE, upscale_batch

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory) -> Path:
    """A local Ray instance for the module; its workers' graph cache (they inherit the environment of its start,
    not the per-test one conftest sets)."""
    ray = pytest.importorskip("ray")
    cache = os.environ.get("VSRQ_CACHE")
    workers_cache = tmp_path_factory.mktemp("workers-cache")
    os.environ["VSRQ_CACHE"] = str(workers_cache)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield workers_cache
    ray.shutdown()
    if cache is None:
        del os.environ["VSRQ_CACHE"]
    else:
        os.environ["VSRQ_CACHE"] = cache


def _library(root: Path) -> tuple[Path, Path]:
    lib = root / "lib"
    write_clip(lib / "a", smooth_frames(5, 64, 64, seed=1))
    write_clip(lib / "shows" / "b", smooth_frames(4, 64, 72, seed=2))
    write_video_with_audio(lib / "c.mp4", smooth_frames(6, 64, 64, seed=3))
    (lib / "shows" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 200)
    model = root / "tiny.pth"
    torch.save({"params": tiny_basicvsr().state_dict()}, model)
    return lib, model


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and STATE not in p.parts}


@pytest.mark.fault
def test_a_library_upscaled_on_ray_equals_upscale_and_resumes(ray_local, tmp_path: Path):
    lib, model = _library(tmp_path)
    out = tmp_path / "out"
    summary = upscale_batch(model, lib, out, workers=2, show_progress=False)
    status = {v.name: v.status for v in summary.videos}
    assert status == {"a": "done", "c.mp4": "done", "shows/b": "done", "shows/broken.mp4": "failed"}
    broken = next(v for v in summary.videos if v.status == "failed")
    assert broken.error.startswith(f"{lib / 'shows' / 'broken.mp4'}: ") and "\n" not in broken.error
    assert summary.frames == 15 and len(summary.per_worker()) == 2

    torch.set_num_threads(1)  # each worker runs torch on its one CPU
    reference = tmp_path / "ref"
    for rel, target in (("a", "a"), ("shows/b", "shows/b"), ("c.mp4", "c.mp4")):
        vsrq.upscale(str(model), lib / rel, reference / target, show_progress=False)
    assert _tree(out) == _tree(reference)  # PNGs and the H.264 stream, byte for byte
    assert audio_packets(out / "c.mp4") == audio_packets(lib / "c.mp4")  # the soundtrack kept
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if STATE not in p.parts)
    assert not any("broken" in p or ".partial" in p or ".old" in p for p in left), left
    written = json.loads((out / STATE / "summary.json").read_text())
    assert (written["done"], written["skipped"], written["failed"], written["frames"]) == (3, 0, 1, 15)

    again = upscale_batch(model, lib, out, workers=2, show_progress=False)
    assert {v.name: v.status for v in again.videos} == {**status, "a": "skipped", "c.mp4": "skipped",
                                                        "shows/b": "skipped"}
    write_clip(lib / "a", smooth_frames(5, 64, 64, seed=9))  # a changed input is redone, the rest skipped
    changed = upscale_batch(model, lib, out, workers=2, show_progress=False)
    assert {v.name: v.status for v in changed.videos}["a"] == "done"
    assert [v.status for v in changed.videos if v.name in ("c.mp4", "shows/b")] == ["skipped", "skipped"]
    other = tmp_path / "other.pth"  # another model redoes everything
    torch.save({"params": tiny_basicvsr(seed=1).state_dict()}, other)
    redone = upscale_batch(other, lib, out, workers=2, show_progress=False)
    assert [v.status for v in redone.videos] == ["done", "done", "done", "failed"]


def _kill_first_busy_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first process Ray names as running a video (``ray::Worker.run``), once."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if pid.isdigit() and b"ray::Worker.run" in cmdline:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


@pytest.mark.fault
def test_a_worker_killed_mid_video_has_its_video_retried(ray_local, tmp_path: Path):
    lib, model = _library(tmp_path)
    (lib / "shows" / "broken.mp4").unlink()
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_busy_worker, args=(stop, killed))
    killer.start()
    try:
        summary = upscale_batch(model, lib, out, workers=2, retries=2, show_progress=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen running a video"
    assert [v.status for v in summary.videos] == ["done", "done", "done"]
    assert str(killed[0]) not in {t.worker.split(":")[1] for t in summary.tasks}  # its task finished elsewhere
    torch.set_num_threads(1)
    vsrq.upscale(str(model), lib / "a", tmp_path / "ref_a", show_progress=False)
    assert _tree(out / "a") == _tree(tmp_path / "ref_a")


def test_a_long_video_split_across_workers_equals_one_worker(ray_local, tmp_path: Path):
    """Segments of whole windows on different workers, joined: the same PNG bytes and the same mp4 bytes
    (soundtrack included) as `vsrq upscale` writes alone."""
    _, model = _library(tmp_path)
    lib = tmp_path / "long"
    write_clip(lib / "frames", smooth_frames(14, 64, 64, seed=5))
    write_video_with_audio(lib / "talk.mp4", smooth_frames(14, 64, 64, seed=6))
    out = tmp_path / "out"
    summary = upscale_batch(model, lib, out, workers=2, chunk=4, overlap=2, segment=4, show_progress=False)
    assert [(v.name, v.status, v.frames) for v in summary.videos] == [("frames", "done", 14), ("talk.mp4", "done", 14)]
    segments = [t for t in summary.tasks if "[" in t.name]
    assert len(segments) == 8 and len({t.worker for t in segments}) == 2  # 4 segments each, on both workers
    torch.set_num_threads(1)
    vsrq.upscale(str(model), lib / "frames", tmp_path / "ref" / "frames", chunk=4, overlap=2, show_progress=False)
    vsrq.upscale(str(model), lib / "talk.mp4", tmp_path / "ref" / "talk.mp4", chunk=4, overlap=2, show_progress=False)
    assert _tree(out) == _tree(tmp_path / "ref")
    assert audio_packets(out / "talk.mp4") == audio_packets(lib / "talk.mp4")
    assert not (out / STATE / "parts").exists() or not any((out / STATE / "parts").rglob("*.png"))


def test_integer_graphs_per_lr_size_on_two_workers(ray_local, tmp_path: Path):
    """`--runtime onnxruntime` with a W8A8 checkpoint on a library of two LR sizes: each worker exports (or
    finds in the shared cache) one graph pair per size, and the outputs equal `vsrq upscale`'s."""
    from vsrq.cli import main

    lib, model = _library(tmp_path)
    (lib / "shows" / "broken.mp4").unlink()
    ckpt = tmp_path / "w8.vsrq"
    assert main(["--quiet", "quantize", "--model", str(model), "--calib", str(lib / "a"), "--calib-clips", "1",
                 "--calib-frames", "3", "-o", str(ckpt)]) == 0
    summary = upscale_batch(ckpt, lib, tmp_path / "out", workers=2, runtime="onnxruntime", show_progress=False)
    assert [v.status for v in summary.videos] == ["done", "done", "done"]
    for rel in ("a", "shows/b", "c.mp4"):
        vsrq.upscale(str(ckpt), lib / rel, tmp_path / "ref" / rel, runtime="onnxruntime", show_progress=False)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "ref")
    graphs = sorted(p.name for p in ray_local.rglob("*.onnx"))  # the workers' shared cache: one set per size
    assert graphs == [f"model_{size}.{part}onnx" for size in ("64x64", "64x72") for part in ("backward.", "flow.", "")]


def _raylets() -> set[int]:
    """Process ids of the raylets (one per Ray node) running on this machine."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                found.add(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.fault
def test_a_killed_job_restarted_completes_with_the_same_outputs(tmp_path: Path):
    """`vsrq upscale-batch` killed (SIGKILL) once its first video is done: the rerun skips that video, redoes
    the rest, and the outputs equal a run that was never interrupted; no Ray process outlives its job."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    lib, model = _library(tmp_path)
    (lib / "shows" / "broken.mp4").unlink()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vsrq.cli", "--quiet", "upscale-batch", str(lib), str(out), "--model", str(model)]
    before = _raylets()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / STATE / "a.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    started = _raylets() - before
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / STATE / "shows" / "b.json").exists()  # killed mid-library
    time.sleep(5)  # Ray's processes share the fate of the job that started them (a task under way may finish)
    assert started and not started & _raylets()  # the job's own raylet went with it
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / STATE / "summary.json").read_text())
    status = {v["name"]: v["status"] for v in summary["videos"]}
    assert status["a"] == "skipped" and status["shows/b"] == "done" and status["c.mp4"] in ("skipped", "done")
    fresh = tmp_path / "fresh"
    assert subprocess.run([*cmd[:-4], str(lib), str(fresh), "--model", str(model)]).returncode == 0
    assert _tree(out) == _tree(fresh)


def test_a_diffusion_model_split_into_chunks_equals_one_worker(ray_local, tmp_path: Path):
    """MGLD-VSR's chunks (its own frame count, each sampled with the seed) as segments on two workers: the same
    frames `vsrq upscale --seed` writes."""
    lib = tmp_path / "lib"
    write_clip(lib / "clip", smooth_frames(12, 20, 24, seed=7))
    summary = upscale_batch("mgldvsr-small", lib, tmp_path / "out", workers=2, seed=3, segment=1, show_progress=False)
    assert [(v.status, v.frames) for v in summary.videos] == [("done", 12)]
    assert len([t for t in summary.tasks if "[" in t.name]) > 1  # split into chunk-aligned segments
    torch.set_num_threads(1)
    vsrq.upscale("mgldvsr-small", lib / "clip", tmp_path / "ref" / "clip", seed=3, show_progress=False)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "ref")
