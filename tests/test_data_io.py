"""Frame folders and videos: round trips, layout discovery, and every bad input as one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smooth_frames, write_clip
from vsrq.data.frames import atomic_output, read_frame, write_frame
from vsrq.data.sources import discover_clips
from vsrq.data.video import VideoWriter, iter_video, probe
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr


def test_png_round_trip_is_exact(tmp_path: Path):
    frame = smooth_frames(1, 20, 30)[0]
    write_frame(tmp_path / "f.png", frame)
    assert np.array_equal(read_frame(tmp_path / "f.png"), frame)


def test_mp4_round_trip_is_close_and_streams(tmp_path: Path):
    frames = smooth_frames(6, 64, 96)
    writer = VideoWriter(tmp_path / "v.mp4", rate=25, crf=10)
    for f in frames:
        writer.write(f)
    writer.close()
    h, w, count, rate = probe(tmp_path / "v.mp4")
    assert (h, w, count, rate) == (64, 96, 6, 25)
    decoded = list(iter_video(tmp_path / "v.mp4"))
    assert len(decoded) == 6
    assert min(psnr(d, f) for d, f in zip(decoded, frames)) > 35  # H.264 at crf 10


def test_discovery_of_every_layout(tmp_path: Path):
    frames = smooth_frames(3, 16, 16)
    write_clip(tmp_path / "single", frames)
    write_clip(tmp_path / "dataset" / "GT" / "b", frames)
    write_clip(tmp_path / "dataset" / "GT" / "a", frames[:2])
    single = discover_clips(tmp_path / "single")
    assert [(c.name, c.num_frames) for c in single] == [("", 3)]
    multi = discover_clips(tmp_path / "dataset" / "GT")
    assert [(c.name, c.num_frames) for c in multi] == [("a", 2), ("b", 3)]
    assert np.array_equal(multi[1].load(), frames)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: _folder(p / "empty"), "empty input"),
        (lambda p: _file(p / "zero.mp4", b""), "empty file"),
        (lambda p: _file(p / "bad.mp4", b"\x00\x01garbage" * 100), "not a readable video"),
        (lambda p: _file(p / "notes.txt", b"hi"), "not a video file"),
    ],
)
@pytest.mark.fault
def test_bad_inputs_are_one_line_errors(tmp_path: Path, make, message):
    with pytest.raises(VsrqError, match=message) as info:
        discover_clips(make(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.fault
def test_mixed_frame_sizes_are_refused(tmp_path: Path):
    write_frame(tmp_path / "00000000.png", np.zeros((16, 16, 3), np.uint8))
    write_frame(tmp_path / "00000001.png", np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(VsrqError, match="frames of different sizes: 16x16 .*20x16"):
        discover_clips(tmp_path)


@pytest.mark.fault
def test_truncated_video_fails_before_output(tmp_path: Path):
    writer = VideoWriter(tmp_path / "v.mp4", rate=25)
    for f in smooth_frames(4, 64, 64):
        writer.write(f)
    writer.close()
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VsrqError):
        discover_clips(tmp_path / "cut.mp4")


@pytest.mark.fault
def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "half.png").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    with pytest.raises(VsrqError, match="exists; pass --overwrite"):
        with atomic_output(target):
            pass
    with atomic_output(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_bytes(b"y")
    assert [p.name for p in target.iterdir()] == ["new.png"]


def test_safetensors_files_get_the_mode_a_plain_open_gives(tmp_path: Path):
    import os

    import torch

    from vsrq.models.weights import write_safetensors

    umask = os.umask(0o022)
    try:
        path = write_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors", {})
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: shipped weights must be readable
    finally:
        os.umask(umask)
