"""Clips from any input a user points at, and sinks that mirror the input's layout.

An input is a video file, a folder of frames, a folder of clip folders (BasicSR's
``<dataset>/GT/<clip>/*.png``) or a folder of video files. Every clip is validated up front (frame
sizes from image headers, the first frame of a video) so bad input fails before any output exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from vsrq.data.frames import IMAGE_EXTS, frame_size, list_frames, read_frame, write_frame
from vsrq.data.video import VIDEO_EXTS, VideoWriter, iter_video, probe
from vsrq.errors import VsrqError


@dataclass(frozen=True)
class Clip:
    """One video: ``name`` is its path relative to the input root ('' for a single clip)."""

    name: str
    path: Path
    kind: str  # "frames" | "video"
    height: int
    width: int
    num_frames: int | None  # None: a container that does not state its length
    frame_names: tuple[str, ...]  # frame folders: the files; videos: empty
    rate: Fraction | None = None

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 frames in display order, decoded one at a time."""
        if self.kind == "video":
            yield from iter_video(self.path)
        else:
            for fname in self.frame_names:
                frame = read_frame(self.path / fname)
                if frame.shape[:2] != (self.height, self.width):
                    raise VsrqError(f"{self.path / fname}: size changed while reading")
                yield frame

    def output_name(self, index: int) -> str:
        """The file name of output frame ``index``: the input's name as PNG, or a numbered PNG for videos."""
        if self.kind == "frames":
            return Path(self.frame_names[index]).stem + ".png"
        return f"{index:08d}.png"

    def load(self, max_frames: int | None = None) -> np.ndarray:
        """All frames (or the first ``max_frames``) stacked (T, H, W, 3); for short clips only."""
        out = []
        for i, frame in enumerate(self.frames()):
            if max_frames is not None and i >= max_frames:
                break
            out.append(frame)
        return np.stack(out)


def _frame_clip(folder: Path, name: str) -> Clip:
    files = list_frames(folder)
    if not files:
        raise VsrqError(f"{folder}: no image frames ({', '.join(IMAGE_EXTS)})")
    sizes: dict[tuple[int, int], str] = {}
    for f in files:
        sizes.setdefault(frame_size(f), f.name)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({fname})" for (h, w), fname in list(sizes.items())[:3])
        raise VsrqError(f"{folder}: frames of different sizes: {shown}")
    (h, w), = sizes
    return Clip(name, folder, "frames", h, w, len(files), tuple(f.name for f in files))


def _video_clip(path: Path, name: str) -> Clip:
    h, w, count, rate = probe(path)
    return Clip(name, path, "video", h, w, count, (), rate)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def discover_clips(root: Path) -> list[Clip]:
    """All clips under ``root``, validated, sorted by name."""
    root = Path(root)
    if not root.exists():
        raise VsrqError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_video(root):
            raise VsrqError(f"{root}: not a video file ({', '.join(VIDEO_EXTS)}) or a folder of frames")
        return [_video_clip(root, "")]
    if list_frames(root):
        return [_frame_clip(root, "")]
    clips = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and list_frames(child):
            clips.append(_frame_clip(child, child.name))
        elif child.is_file() and is_video(child):
            clips.append(_video_clip(child, child.stem))
    if not clips:
        raise VsrqError(f"{root}: empty input, no frames, clip folders or video files inside")
    return clips


def clip_by_name(clips: list[Clip]) -> dict[str, Clip]:
    return {c.name: c for c in clips}


class FrameSink:
    """Writes one clip's frames as PNGs under ``folder`` (created on the first frame)."""

    def __init__(self, folder: Path, clip: Clip) -> None:
        self.folder, self.clip, self.count = folder, clip, 0

    def write(self, frame: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_frame(self.folder / self.clip.output_name(self.count), frame)
        self.count += 1

    def close(self) -> None:
        pass


class VideoSink:
    """Writes one clip as an H.264 mp4 at the input's frame rate (25 fps for frame folders), with the input
    video's audio streams carried over."""

    def __init__(self, path: Path, clip: Clip) -> None:
        self.writer = VideoWriter(path, clip.rate or Fraction(25), audio_from=clip.path if clip.kind == "video" else None)

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def close(self) -> None:
        self.writer.close()


def open_sink(output: Path, clip: Clip, n_clips: int) -> FrameSink | VideoSink:
    """A sink for ``clip`` under the (temporary) output path, mirroring the input layout."""
    if is_video(output):
        if n_clips != 1:
            raise VsrqError(f"{output}: a video output holds one clip, the input has {n_clips}; write to a folder")
        return VideoSink(output, clip)
    return FrameSink(output / clip.name if clip.name else output, clip)
