"""Video files through PyAV: streaming decode to RGB frames and H.264 encode."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from vsrq.errors import VsrqError

VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".y4m")


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VsrqError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VsrqError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VsrqError(f"{path}: not a readable video ({exc.__class__.__name__})") from None
    if not container.streams.video:
        container.close()
        raise VsrqError(f"{path}: has no video stream")
    return container


def probe(path: Path) -> tuple[int, int, int | None, Fraction | None]:
    """(height, width, frame count or None when the container does not say, frame rate).

    Decodes the first frame, so a corrupt file fails here, before any output is opened.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VsrqError(f"{path}: corrupt video ({exc.__class__.__name__})") from None
        if first is None:
            raise VsrqError(f"{path}: the video holds no frames")
        count = stream.frames if stream.frames and stream.frames > 0 else None
        rate = stream.average_rate
        return first.height, first.width, count, Fraction(rate) if rate else None
    finally:
        container.close()


def iter_video(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H, W, 3), one at a time: memory stays at one decoded frame."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VsrqError(f"{path}: corrupt video ({exc.__class__.__name__})") from None
    finally:
        container.close()


class VideoWriter:
    """H.264 (yuv420p) writer; frames are RGB uint8 with even sides (x4 outputs always are).

    ``audio_from``: a video whose audio streams are carried into the output as they are (remuxed packet by
    packet when the video is closed, never re-encoded), so upscaling keeps the soundtrack.
    """

    def __init__(self, path: Path, rate: Fraction | float = 25, crf: int = 16, audio_from: Path | None = None) -> None:
        self.path = path
        self.rate = Fraction(rate).limit_denominator(1001)
        self.crf = crf
        self.audio_from = audio_from
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._audio: dict[int, av.stream.Stream] = {}  # input stream index -> output stream

    def write(self, frame: np.ndarray) -> None:
        if self._container is None:
            h, w = frame.shape[:2]
            if h % 2 or w % 2:
                raise VsrqError(f"H.264 needs even frame sides, got {w}x{h}; write PNG frames instead")
            self._container = av.open(str(self.path), mode="w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=self.rate)
            self._stream.width, self._stream.height = w, h
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf), "preset": "medium"}
            self._add_audio_streams()
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def _add_audio_streams(self) -> None:
        if self.audio_from is None:
            return
        with av.open(str(self.audio_from)) as source:
            for stream in source.streams.audio:
                name = stream.codec_context.name
                if name not in self._container.supported_codecs:
                    raise VsrqError(f"{self.audio_from}: its {name} audio cannot be carried into an mp4; "
                                    "write PNG frames, or convert the audio first")
                self._audio[stream.index] = self._container.add_stream_from_template(stream)

    def _copy_audio(self) -> None:
        """Every audio packet of the source, in order, one at a time (memory stays at one packet)."""
        with av.open(str(self.audio_from)) as source:
            streams = [s for s in source.streams.audio if s.index in self._audio]
            try:
                for packet in source.demux(*streams):
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    packet.stream = self._audio[packet.stream.index]
                    self._container.mux(packet)
            except av.error.FFmpegError as exc:
                raise VsrqError(f"{self.audio_from}: its audio cannot be copied ({exc.__class__.__name__})") from None

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self._audio:
                self._copy_audio()
            self._container.close()
            self._container = None
