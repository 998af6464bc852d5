"""Streaming inference: exactness with full overlap, the memory bound, and the file-level pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import smooth_frames, tiny_basicvsr, write_clip
from vsrq.data.sources import discover_clips
from vsrq.data.video import VideoWriter
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8
from vsrq.runtime.upscale import StreamConfig, stream_upscale, torch_runner, upscale_path


def _whole_clip(model, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.inference_mode():
        return tensor_to_uint8(model(x)[0])


def test_chunks_with_overlap_covering_the_clip_equal_whole_clip():
    model = tiny_basicvsr()
    frames = smooth_frames(7, 64, 64)
    streamed = np.stack(list(stream_upscale(torch_runner(model), frames, StreamConfig(chunk=2, overlap=7))))
    assert np.array_equal(streamed, _whole_clip(model, frames))


def test_short_overlap_stays_close_to_whole_clip():
    model = tiny_basicvsr()
    frames = smooth_frames(9, 64, 64)
    streamed = list(stream_upscale(torch_runner(model), frames, StreamConfig(chunk=3, overlap=2)))
    whole = _whole_clip(model, frames)
    assert len(streamed) == 9
    assert min(psnr(s, w) for s, w in zip(streamed, whole)) > 30


@pytest.mark.parametrize("length, chunk, overlap", [(100, 8, 3), (17, 16, 0), (5, 16, 4)])
def test_window_never_exceeds_the_bound(length: int, chunk: int, overlap: int):
    """A 100-frame stream never holds more than chunk + overlap + max(overlap, 1) frames."""
    cfg = StreamConfig(chunk=chunk, overlap=overlap)
    seen: list[int] = []

    def runner(lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        assert lr.shape[1] <= cfg.max_window and len(output_frames) <= chunk
        return torch.zeros(1, len(output_frames), 3, 4, 4)

    def frames():
        for _ in range(length):
            yield np.zeros((1, 1, 3), np.uint8)

    out = list(stream_upscale(runner, frames(), cfg, on_window=seen.append))
    assert len(out) == length
    assert max(seen) <= cfg.max_window


@pytest.mark.fault
def test_single_frame_clip_is_refused():
    with pytest.raises(VsrqError, match="at least 2 frames"):
        list(stream_upscale(torch_runner(tiny_basicvsr()), smooth_frames(1, 64, 64), StreamConfig()))


def test_upscale_path_mirrors_layout_and_writes_mp4(tmp_path: Path):
    model = tiny_basicvsr()
    frames = smooth_frames(3, 64, 64)
    write_clip(tmp_path / "in" / "clipA", frames)
    write_clip(tmp_path / "in" / "clipB", frames[:2])
    upscale_path(torch_runner(model), tmp_path / "in", tmp_path / "out", show_progress=False)
    outs = discover_clips(tmp_path / "out")
    assert [(c.name, c.num_frames, c.height) for c in outs] == [("clipA", 3, 256), ("clipB", 2, 256)]
    assert np.array_equal(outs[0].load(), _whole_clip(model, frames))

    writer = VideoWriter(tmp_path / "in.mp4")
    for f in frames:
        writer.write(f)
    writer.close()
    upscale_path(torch_runner(model), tmp_path / "in.mp4", tmp_path / "sr.mp4", show_progress=False)
    (clip,) = discover_clips(tmp_path / "sr.mp4")
    assert (clip.num_frames, clip.height, clip.width) == (3, 256, 256)


def test_the_soundtrack_is_carried_into_the_upscaled_mp4(tmp_path: Path):
    """Audio packets come out as they went in (same bytes, same times): remuxed, never re-encoded."""
    from tests.conftest import audio_packets, write_video_with_audio

    source = write_video_with_audio(tmp_path / "talk.mp4", smooth_frames(5, 64, 64))
    upscale_path(torch_runner(tiny_basicvsr()), source, tmp_path / "sr.mp4", show_progress=False)
    packets = audio_packets(source)
    assert len(packets) >= 3 and audio_packets(tmp_path / "sr.mp4") == packets
    (clip,) = discover_clips(tmp_path / "sr.mp4")
    assert (clip.num_frames, clip.height) == (5, 256)


@pytest.mark.fault
def test_failure_mid_run_leaves_no_output(tmp_path: Path):
    write_clip(tmp_path / "in" / "ok", smooth_frames(2, 64, 64))
    write_clip(tmp_path / "in" / "small", smooth_frames(2, 32, 32))  # too small for BasicVSR
    with pytest.raises(VsrqError, match="at least 64x64"):
        upscale_path(torch_runner(tiny_basicvsr()), tmp_path / "in", tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
