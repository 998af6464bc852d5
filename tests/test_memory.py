"""Peak-RSS measurement (the benchmarks' ``peak_rss_mb``) and handing freed heap back."""

from __future__ import annotations

import numpy as np
import pytest

from vsrq.memory import peak_rss_mb, release_free_memory, reset_peak_rss, trimming_heap


def test_peak_rss_sees_a_touched_allocation_and_resets():
    if not reset_peak_rss() or peak_rss_mb() is None:
        pytest.skip("this system keeps no resettable peak RSS (/proc/self/clear_refs)")
    before = peak_rss_mb()
    block = np.ones(256 << 17)  # 256 MB, every page touched
    with_block = peak_rss_mb()
    assert with_block - before > 200
    del block
    release_free_memory()
    assert reset_peak_rss()
    assert peak_rss_mb() < with_block - 200


_HEAP_PROBE = """
import contextlib, sys, time, torch
from vsrq.memory import bound_heap, trimming_heap
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
if sys.argv[1] == 'bound' and not bound_heap():
    print('skip')
    sys.exit()
torch.ones(1 << 20)  # made and freed: a 4 MB mapping: glibc's own threshold rises past 2 MB from here
big, small = [], []
for _ in range(200):
    big.append(torch.ones(1 << 19))  # 2 MB each, touched
    small.append(torch.ones(64))  # small live tensors in between pin the heap
with trimming_heap(0.01) if sys.argv[1] == 'trim' else contextlib.nullcontext():
    before = rss()
    big.clear()
    time.sleep(0.2)  # a trim thread's turns
    print(before - rss())
"""


@pytest.mark.parametrize("mode", ["default", "bound", "trim"])
def test_bound_or_trimmed_heap_returns_freed_tensors_to_the_system(mode: str):
    """Without either, 400 MB of freed 2 MB tensors stay resident between live small ones; with a bounded heap
    they go back at once, with the trimming thread within its interval."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "skip":
        pytest.skip("this C library has no glibc mmap threshold")
    released = float(out.stdout)
    if mode in ("bound", "trim"):
        assert released > 350
    else:
        assert released < 50


def test_trimming_heap_stops_its_thread_and_rejects_a_bad_interval():
    import ctypes.util
    import threading

    glibc = hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim")
    with trimming_heap(0.01):
        assert any(t.name == "vsrq-heap-trim" for t in threading.enumerate()) == glibc
    assert not any(t.name == "vsrq-heap-trim" for t in threading.enumerate())
    with pytest.raises(ValueError, match="interval_s"):
        with trimming_heap(0):
            pass
