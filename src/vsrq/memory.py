"""Process memory: peak resident size for the benchmarks' ``peak_rss_mb``, and malloc's share of it.

Calibration allocates and frees activation-sized tensors by the thousand. glibc's malloc keeps freed
heap pages resident, so a process that lives through several passes and fine-tuning stages grew far
past what it held at any moment (QBasicVSR: 72 MB of live tensors at 9.6 GB resident after three
one-step stages). :func:`release_free_memory` returns those pages after each pass and step. Within
one step the heap still fragments to about 2.5x the live tensors (QBasicVSR's default: 1.9 GB live,
4.9 GB resident); :func:`bound_heap` trades time for that: every allocation of 1 MB or more gets its
own mapping, returned to the system when freed, so resident size follows live size, at about twice
the calibration time (fresh pages are zero-filled by the kernel on first touch). :func:`trimming_heap`
is the cheaper cut that calibration uses by default: a thread returns the free pages every fraction of a
second, so only the pages freed since the last trim and touched again pay the zero-fill.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _glibc(symbol: str):  # type: ignore[no-untyped-def]
    """A glibc malloc function, or None on other C libraries (macOS, musl)."""
    return getattr(_libc(), symbol, None)


def release_free_memory() -> None:
    """Give the heap pages malloc holds but no tensor uses back to the system (glibc; elsewhere a no-op)."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


@contextmanager
def trimming_heap(interval_s: float = 0.5) -> Iterator[None]:
    """While inside, a daemon thread calls :func:`release_free_memory` every ``interval_s`` seconds: resident size
    stays near the live tensors inside a step, where the calls between steps cannot reach (glibc; elsewhere a
    no-op). ctypes drops the GIL during the call, so the work it interrupts is the allocator's lock alone.
    Measured on TARQ's rounding stage (bench/heap_probe.py): peak 2.06 GB at 1.18x the time every 0.5 s, 1.96 GB
    at 1.34x every 0.1 s, against 4.46 GB untrimmed and 1.95 GB at 2.5x with :func:`bound_heap`."""
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    if _glibc("malloc_trim") is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            release_free_memory()

    thread = threading.Thread(target=loop, name="vsrq-heap-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def set_mmap_threshold(nbytes: int) -> bool:
    """From now on, serve allocations of ``nbytes`` or more from their own mappings, returned to the system when
    freed (glibc's M_MMAP_THRESHOLD, fixed: no longer raised as big blocks are freed). False where the C
    library has no such switch."""
    mallopt = _glibc("mallopt")
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, nbytes))


def bound_heap() -> bool:
    """Allocations of 1 MB or more in their own mappings (:func:`set_mmap_threshold`): the process's resident
    size then follows its live tensors."""
    return set_mmap_threshold(1 << 20)


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement (Linux: /proc/self/clear_refs); False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """The process's peak resident size in MB since start or the last :func:`reset_peak_rss` (None: unknown)."""
    return _status_mb("VmHWM")
