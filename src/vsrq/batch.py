"""Upscale a library of videos on Ray: one model load per worker, resumable, failures isolated.

Ray core actors, not Ray Data: the unit of work is a whole video (temporal context is the point of VSR,
and ``ray.data.read_videos`` yields single frames), each with a side effect (an output written whole, a
done-marker) and a fate of its own (done, failed with its error, retried when its worker died). Actors
give exactly that: each worker loads the model once in its constructor and streams its videos as
``vsrq upscale`` does (bounded memory, the same code, so the same bytes at the same torch thread count);
``max_restarts`` / ``max_task_retries`` re-run a video whose worker process died.

Layout: every frame folder under the library becomes a PNG folder at the same relative path, every video
file an .mp4 of the same stem. ``<output>/.vsrq-batch/`` holds a done-marker per video (the model's and the
input's SHA-256, the runtime and the window geometry) and ``summary.json``; a rerun skips a video whose
marker matches and whose output exists, and redoes any other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vsrq import checkpoint
from vsrq.atomic import file_sha256
from vsrq.data.frames import atomic_output, list_frames, read_frame, write_frame
from vsrq.data.sources import discover_clips, is_video, open_sink
from vsrq.errors import VsrqError, one_line, require
from vsrq.progress import progress, say
from vsrq.runtime.upscale import StreamConfig, segment_inputs, stream_upscale, upscale_path
from vsrq.version import __version__

STATE = ".vsrq-batch"


@dataclass(frozen=True)
class Video:
    """One unit of work: ``name`` is its path relative to the library (posix)."""

    name: str
    source: Path
    target: Path


@dataclass
class Outcome:
    """What became of one video."""

    name: str
    status: str  # "done" | "skipped" | "failed"
    frames: int = 0
    seconds: float = 0.0
    worker: str = ""
    error: str = ""


@dataclass
class Summary:
    """The batch job's result, printed and written as ``summary.json``."""

    videos: list[Outcome] = field(default_factory=list)
    tasks: list[Outcome] = field(default_factory=list)  # whole videos, segments and joins, as they ran
    wall_s: float = 0.0
    workers: int = 0

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.videos)

    @property
    def frames(self) -> int:
        return sum(v.frames for v in self.videos if v.status == "done")

    def per_worker(self) -> dict[str, float]:
        """Frames per second of each worker's busy time."""
        busy: dict[str, list[float]] = {}
        for v in self.tasks:
            if v.status == "done" and v.seconds > 0:
                acc = busy.setdefault(v.worker, [0.0, 0.0])
                acc[0] += v.frames
                acc[1] += v.seconds
        return {w: round(f / s, 3) for w, (f, s) in sorted(busy.items())}

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.count("done"), "skipped": self.count("skipped"), "failed": self.count("failed"),
                "frames": self.frames, "wall_s": round(self.wall_s, 2), "workers": self.workers,
                "frames_per_s_per_worker": self.per_worker(), "videos": [asdict(v) for v in self.videos],
                "tasks": [asdict(t) for t in self.tasks]}


def library_videos(library: Path, output: Path) -> list[Video]:
    """Every frame folder and video file under ``library`` (any depth), sorted; nothing is decoded here, so
    a corrupt file becomes a failed video rather than a failed job."""
    library = Path(library)
    if not library.is_dir():
        raise VsrqError(f"{library}: not a folder of videos (for one clip use `vsrq upscale`)")
    videos = []
    for folder, dirs, files in os.walk(library):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(library)
        if list_frames(here):
            if here == library:
                raise VsrqError(f"{library}: a folder of frames is one clip; use `vsrq upscale`")
            videos.append(Video(rel.as_posix(), here, output / rel))
            dirs[:] = []
            continue
        for f in sorted(files):
            if is_video(here / f):
                videos.append(Video((rel / f).as_posix(), here / f, output / (rel / f).with_suffix(".mp4")))
    if not videos:
        raise VsrqError(f"{library}: no frame folders or video files inside")
    return sorted(videos, key=lambda v: v.name)


def input_sha256(source: Path) -> str:
    """SHA-256 of a video file, or of a frame folder's names and bytes."""
    if source.is_file():
        return file_sha256(source)
    h = hashlib.sha256()
    for f in list_frames(source):
        h.update(f.name.encode() + b"\0")
        file_sha256(f, h)
    return h.hexdigest()


def model_sha256(model: str) -> str:
    """A ``.vsrq`` checkpoint's content hash (creation time aside), a file's SHA-256, or a named model's name."""
    path = Path(model)
    if path.suffix == checkpoint.SUFFIX and path.is_file():
        return checkpoint.content_hash(path)
    return file_sha256(path) if path.is_file() else f"name:{model}"


def _marker(output: Path, video: Video) -> Path:
    return output / STATE / (video.name + ".json")


def _parts(output: Path, video: Video) -> Path:
    """Where the segments of a split video put their frames until the video is whole."""
    return output / STATE / "parts" / video.name


@dataclass(frozen=True)
class Task:
    """A whole video (``stop`` None), a segment of output frames ``start`` to ``stop``, or the step that joins
    a split video's segments into its output (``finish``)."""

    video: Video
    marker: Path
    key: tuple[tuple[str, Any], ...]
    start: int = 0
    stop: int | None = None
    total: int | None = None
    finish: bool = False

    @property
    def label(self) -> str:
        if self.finish:
            return f"{self.video.name} (joining)"
        return self.video.name if self.stop is None else f"{self.video.name} [{self.start}:{self.stop}]"


class Worker:
    """A Ray actor's body: loads the model once, then upscales whole videos or segments on request."""

    def __init__(self, model: str, runtime: str, threads: int, chunk: int, overlap: int, seed: int,
                 float_dtype: str = "auto") -> None:
        import contextlib

        import torch

        from vsrq.api import open_runner

        torch.set_num_threads(threads)
        self._stack = contextlib.ExitStack()
        self.runner, self.stream = self._stack.enter_context(
            open_runner(model, runtime, chunk, overlap, seed, threads=threads, float_dtype=float_dtype))
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def geometry(self) -> StreamConfig:
        return self.stream

    def run(self, task: Task, parts: Path) -> Outcome:
        """Do one task; its failure is recorded in the outcome and the worker goes on."""
        start = time.perf_counter()
        try:
            if task.finish:
                frames = self._join(task, parts)
            elif task.stop is None:
                upscale_path(self.runner, task.video.source, task.video.target, self.stream, overwrite=True,
                             show_progress=False)
                (written,) = discover_clips(task.video.target)
                frames = written.num_frames or 0
            else:
                frames = self._segment(task, parts)
            if task.finish or task.stop is None:
                with atomic_output(task.marker, overwrite=True) as tmp:
                    tmp.write_text(json.dumps({**dict(task.key), "frames": frames}, indent=1, sort_keys=True) + "\n")
        except Exception as exc:
            return Outcome(task.label, "failed", seconds=time.perf_counter() - start, worker=self.name,
                           error=one_line(exc))
        return Outcome(task.label, "done", 0 if task.finish else frames, time.perf_counter() - start, self.name)

    def _segment(self, task: Task, parts: Path) -> int:
        """Output frames ``start`` to ``stop`` as PNGs in ``parts``, each written whole (temporary name, rename)."""
        (clip,) = discover_clips(task.video.source)
        span = segment_inputs(self.stream, task.start, task.stop, task.total)
        frames = itertools.islice(clip.frames(), span.start, span.stop)
        parts.mkdir(parents=True, exist_ok=True)
        n = 0
        for i, hr in enumerate(stream_upscale(self.runner, frames, self.stream, start=task.start, stop=task.stop)):
            name = clip.output_name(task.start + i)
            tmp = parts / f".{os.getpid()}.{name}"  # a killed writer's leftover is a dot-file, dropped at the join
            write_frame(tmp, hr)
            os.replace(tmp, parts / name)
            n += 1
        if n != task.stop - task.start:
            raise VsrqError(f"{task.video.source}: {n} frames came out of segment {task.start}:{task.stop}")
        return n

    def _join(self, task: Task, parts: Path) -> int:
        """A split video's segments, in order, into its output: the PNG folder moved into place, or encoded
        into an mp4 (with the input's audio) as `vsrq upscale` encodes it."""
        (clip,) = discover_clips(task.video.source)
        names = [clip.output_name(i) for i in range(task.total)]
        missing = [n for n in names if not (parts / n).is_file()]
        if missing:
            raise VsrqError(f"{task.video.name}: segment frames missing ({missing[0]} and {len(missing) - 1} more)")
        with atomic_output(task.video.target, overwrite=True) as tmp:
            if is_video(task.video.target):
                sink = open_sink(tmp, clip, 1)
                for n in names:
                    sink.write(read_frame(parts / n))
                sink.close()
            else:
                for leftover in parts.glob(".*"):
                    leftover.unlink()
                os.replace(parts, tmp)
        shutil.rmtree(parts, ignore_errors=True)
        return len(names)


def upscale_batch(
    model: str | Path,
    library: str | Path,
    output: str | Path,
    workers: int = 1,
    cpus_per_worker: int = 1,
    address: str | None = None,
    runtime: str = "torch",
    retries: int = 2,
    overwrite: bool = False,
    chunk: int = 16,
    overlap: int = 8,
    seed: int = 0,
    segment: int = 256,
    show_progress: bool = True,
    float_dtype: str = "auto",
) -> Summary:
    """Upscale every video under ``library`` into ``output`` (same layout) on Ray ``workers`` actors.

    ``address``: a running cluster (``auto``, ``ray://head:10001``); without it a local Ray instance is
    started for this job. Videos already done with this model and this input are skipped unless
    ``overwrite``; a worker process that dies has its task retried ``retries`` times. Videos longer than
    ``segment`` frames (rounded to whole windows; 0: never) are split into segments that run on any
    worker and join into the same bytes one worker would write. ``float_dtype``: what stays float on ``torch-int8`` (see
    :func:`vsrq.api.upscale`).
    """
    if workers < 1 or cpus_per_worker < 1 or retries < 0 or segment < 0:
        raise VsrqError(f"workers and cpus per worker must be >= 1, retries and segment >= 0, got {workers}, "
                        f"{cpus_per_worker}, {retries}, {segment}")
    ray = require("ray", "ray", "batch upscaling")
    model, library, output = str(model), Path(library), Path(output)
    if output.resolve().is_relative_to(library.resolve()):
        raise VsrqError(f"{output} is inside the library {library}; write elsewhere")
    if not Path(model).suffix == ".onnx":
        from vsrq.api import load

        load(model)  # a bad model is one line here, before any worker starts
    start = time.perf_counter()
    videos = library_videos(library, output)
    summary = Summary(workers=workers)
    key_base = {"model": model_sha256(model), "runtime": runtime, "chunk": chunk, "overlap": overlap, "seed": seed,
                "vsrq": __version__}
    if runtime == "torch-int8":  # it changes the output's bytes: a video done in another dtype is redone
        key_base["float_dtype"] = float_dtype
    todo: list[tuple[Video, dict[str, Any], int | None]] = []
    for video in videos:
        try:
            key = {**key_base, "input": input_sha256(video.source)}
            (clip,) = discover_clips(video.source)  # a corrupt or empty video fails here, alone
        except (OSError, VsrqError) as exc:
            summary.videos.append(Outcome(video.name, "failed", error=one_line(exc)))
            continue
        marker = _marker(output, video)
        if not overwrite and video.target.exists() and marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict) and {k: old.get(k) for k in key} == key:
                summary.videos.append(Outcome(video.name, "skipped", int(old.get("frames") or 0)))
                continue
        shutil.rmtree(_parts(output, video), ignore_errors=True)  # frames of an interrupted run are redone
        todo.append((video, key, clip.num_frames))
    if todo:
        _run(ray, todo, output, summary, model, runtime, workers, cpus_per_worker, address, retries, chunk, overlap,
             seed, segment, show_progress, float_dtype)
    summary.videos.sort(key=lambda v: v.name)
    summary.wall_s = time.perf_counter() - start
    with atomic_output(output / STATE / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    return summary


def _plan(todo: list[tuple[Video, dict[str, Any], int | None]], output: Path, stream: StreamConfig,
          segment: int) -> list[Task]:
    """Whole videos, and the segments of those longer than ``segment`` frames (whole windows each)."""
    tasks = []
    size = max(stream.chunk, segment // stream.chunk * stream.chunk)
    for video, key, total in todo:
        frozen = tuple(sorted(key.items()))
        if segment and total and total > size:
            tasks += [Task(video, _marker(output, video), frozen, a, min(a + size, total), total)
                      for a in range(0, total, size)]
        else:
            tasks.append(Task(video, _marker(output, video), frozen, total=total))
    return tasks


def _run(ray: Any, todo: list[tuple[Video, dict[str, Any], int | None]], output: Path, summary: Summary, model: str,
         runtime: str, workers: int, cpus_per_worker: int, address: str | None, retries: int, chunk: int,
         overlap: int, seed: int, segment: int, show_progress: bool, float_dtype: str) -> None:
    """Dispatch tasks to a pool of actors, one task per idle actor; a split video's join follows its last
    segment; outcomes are collected as they come."""
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers * cpus_per_worker}
        ray.init(**kwargs, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        actor = ray.remote(Worker).options(num_cpus=cpus_per_worker, max_restarts=retries, max_task_retries=retries)

        def spawn() -> Any:
            return actor.remote(model, runtime, cpus_per_worker, chunk, overlap, seed, float_dtype)

        idle = [spawn()]
        queue = _plan(todo, output, ray.get(idle[0].geometry.remote()), segment)
        idle += [spawn() for _ in range(min(workers, len(queue)) - 1)]
        pending = {t.video.name: sum(1 for q in queue if q.video.name == t.video.name) for t in queue if t.stop}
        failed: dict[str, str] = {}
        frames: dict[str, int] = {}
        total = sum(t.stop - t.start if t.stop else t.total or 0 for t in queue)
        running: dict[Any, tuple[Task, Any]] = {}
        say(f"batch: {len(todo)} video(s), {len(queue)} task(s) on {len(idle)} worker(s)")
        with progress(total=total or None, desc="batch", unit="frame", enabled=show_progress) as bar:
            while queue or running:
                while queue and idle:
                    task = queue.pop(0)
                    worker = idle.pop()
                    running[worker.run.remote(task, _parts(output, task.video))] = (task, worker)
                ready, _ = ray.wait(list(running), num_returns=1)
                task, worker = running.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayActorError as exc:  # its process died past every retry
                    outcome = Outcome(task.label, "failed", error=f"worker died: {one_line(exc)}")
                    worker = spawn()
                idle.append(worker)
                summary.tasks.append(outcome)
                bar.update(outcome.frames)
                name = task.video.name
                frames[name] = frames.get(name, 0) + outcome.frames
                if outcome.status == "failed":
                    failed.setdefault(name, outcome.error)
                    say(f"batch: {outcome.name} failed: {outcome.error}")
                if task.stop is not None and not task.finish:  # a segment: the join follows the last one
                    pending[name] -= 1
                    if pending[name] == 0 and name not in failed:
                        queue.insert(0, replace(task, start=0, stop=None, finish=True))
                        continue
                    if pending[name] > 0:
                        continue
                summary.videos.append(Outcome(name, "failed" if name in failed else "done", frames[name],
                                              error=failed.get(name, "")))
                if name in failed:
                    shutil.rmtree(_parts(output, task.video), ignore_errors=True)
    finally:
        if started_here:
            ray.shutdown()
