"""Progress of long work (calibration, upscaling, evaluation), on stderr.

A terminal gets a live tqdm bar. Anywhere else (``> log 2>&1``, a batch job) the same progress comes as
plain lines: one when a stage starts, one every :data:`EVERY` seconds while it runs (step, elapsed time,
an estimate of what is left) and one when it ends, so a log tells a slow run from a hung one.
``VSRQ_PROGRESS=0`` or :func:`set_quiet` (``vsrq --quiet``) silences both; ``VSRQ_PROGRESS=1`` forces bars.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Callable, TextIO

from tqdm import tqdm

EVERY = 30.0  # seconds between log lines
_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) every progress bar and line of this process."""
    global _quiet
    _quiet = quiet


class LineProgress:
    """tqdm's ``update`` / context-manager interface, written as occasional log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = EVERY, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.every = total, desc or "work", unit, every
        self.stream = stream or sys.stderr
        self.clock = clock
        self.n = 0
        self.start = self.last = clock()
        self._line(f"{self.desc}: started" + (f", {total} {unit}" if total else ""))

    def _line(self, text: str) -> None:
        self.stream.write(f"vsrq: {text}\n")
        self.stream.flush()

    def _status(self) -> str:
        elapsed = self.clock() - self.start
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        text = f"{self.desc}: {done} {self.unit}, {elapsed:.0f} s"
        if self.total and 0 < self.n < self.total:
            text += f", ~{elapsed / self.n * (self.total - self.n):.0f} s left"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._line(self._status())

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._line(self._status().replace(": ", ": done, ", 1) if kind is None else f"{self.desc}: stopped ({kind.__name__})")


def say(text: str) -> None:
    """A stage line on stdout, flushed at once (a redirected stdout is block-buffered); nothing when quiet."""
    if not _quiet and os.environ.get("VSRQ_PROGRESS") != "0":
        print(text, flush=True)


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True) -> tqdm | LineProgress:
    """A bar on a terminal, log lines elsewhere; nothing when disabled or quiet."""
    env = os.environ.get("VSRQ_PROGRESS")
    if not enabled or _quiet or env == "0":
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty() or env == "1":
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
    return LineProgress(total, desc, unit)
