"""Streaming inference of a recurrent VSR model over videos of any length.

The model sees windows of at most ``chunk + 2 * overlap`` frames: the ``chunk`` frames it outputs
plus up to ``overlap`` frames either side that only warm up the forward and backward recurrences.
Memory is therefore bounded by the window, not by the video: per window the LR frames, BasicVSR's
backward features (64 channels per frame) and ``chunk`` HR outputs. With ``overlap`` at least the
clip length the result equals whole-clip inference exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from vsrq.data.frames import atomic_output
from vsrq.data.sources import Clip, discover_clips, open_sink
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import tensor_to_uint8
from vsrq.progress import progress

MIN_WINDOW = 2  # BasicVSR aligns neighbours: a window needs two frames


class WindowRunner(Protocol):
    """Runs a model on LR frames (1, T, 3, H, W) in [0, 1] and returns HR frames for ``output_frames``."""

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor: ...


@dataclass(frozen=True)
class StreamConfig:
    """Window geometry: ``chunk`` output frames per window, ``overlap`` context frames each side."""

    chunk: int = 16
    overlap: int = 8

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.overlap < 0:
            raise VsrqError(f"chunk must be >= 1 and overlap >= 0, got chunk={self.chunk}, overlap={self.overlap}")

    @property
    def context_before(self) -> int:
        """Frames kept before the next output; at least one, so a 1-frame tail still has a neighbour."""
        return max(self.overlap, MIN_WINDOW - 1)

    @property
    def max_window(self) -> int:
        return self.context_before + self.chunk + self.overlap


def torch_runner(model: torch.nn.Module, device: str = "cpu") -> WindowRunner:
    """A :class:`WindowRunner` over a PyTorch module (already on ``device``) whose forward accepts
    ``output_frames``; windows go to ``device`` and come back to the CPU for writing."""

    def run(lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        with torch.inference_mode():
            return model(lr.to(device), output_frames=output_frames).cpu()

    return run


def chunk_runner(upscale_chunk: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu") -> WindowRunner:
    """A :class:`WindowRunner` for models that see only their output frames (diffusion chunks):
    ``upscale_chunk`` maps LR frames ``(n, 3, h, w)`` on ``device`` to HR frames, the context frames are unused."""

    def run(lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        return upscale_chunk(lr[0, output_frames.start : output_frames.stop].to(device)).cpu()[None]

    return run


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    arr = np.stack(frames).astype(np.float32) / 255.0  # (T, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).unsqueeze(0).contiguous()


def stream_upscale(
    runner: WindowRunner,
    frames: Iterable[np.ndarray],
    config: StreamConfig = StreamConfig(),
    on_window: Callable[[int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield HR uint8 frames in order, holding at most ``config.max_window`` LR frames at once.

    A segment of a video (output frames ``start`` to ``stop``, ``start`` a multiple of ``config.chunk``)
    is computed from the frames :func:`segment_inputs` names, window for window as the whole video would
    be: segments on different machines join into the same bytes. ``on_window`` is told the length of
    each window run (tests use it to check the bound).
    """
    if start % config.chunk:
        raise VsrqError(f"a segment starts on a window boundary (a multiple of {config.chunk}), not at {start}")
    buffer: deque[np.ndarray] = deque()
    first = max(0, start - config.context_before)  # absolute index of buffer[0]
    emitted = start  # next frame to output
    it = iter(frames)
    exhausted = False
    while True:
        while not exhausted and first + len(buffer) < emitted + config.chunk + config.overlap:
            frame = next(it, None)
            if frame is None:
                exhausted = True
            else:
                buffer.append(frame)
        end = first + len(buffer)
        if emitted >= end or (stop is not None and emitted >= stop):
            return
        if end - first < MIN_WINDOW:
            raise VsrqError(f"a clip needs at least {MIN_WINDOW} frames, this one has {end - first}")
        last = min(emitted + config.chunk, end, stop if stop is not None else end)
        window = list(buffer)
        if on_window is not None:
            on_window(len(window))
        hr = runner(_to_tensor(window), range(emitted - first, last - first))
        yield from tensor_to_uint8(hr[0])
        emitted = last
        while buffer and first < emitted - config.context_before:
            buffer.popleft()
            first += 1


def segment_inputs(config: StreamConfig, start: int, stop: int, total: int) -> range:
    """The input frames the segment of output frames ``start`` to ``stop`` (of ``total``) reads."""
    return range(max(0, start - config.context_before), min(total, stop + config.overlap))


def upscale_path(
    runner: WindowRunner,
    source: Path,
    output: Path,
    config: StreamConfig = StreamConfig(),
    overwrite: bool = False,
    show_progress: bool = True,
) -> list[Clip]:
    """Upscale every clip under ``source`` into ``output`` (PNG folders mirroring the input, or one .mp4).

    Output appears only when every clip succeeded.
    """
    clips = discover_clips(source)
    with atomic_output(output, overwrite) as tmp:
        for clip in clips:
            sink = open_sink(tmp, clip, len(clips))
            label = clip.name or Path(source).name
            with progress(total=clip.num_frames, desc=label, unit="frame", enabled=show_progress) as bar:
                for hr in stream_upscale(runner, clip.frames(), config):
                    sink.write(hr)
                    bar.update(1)
            sink.close()
    return clips
