"""Where torch work runs: one check that turns a device name into a torch device or one clear error, and the CPU
features that decide which integer kernels run (and how they round)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from vsrq.errors import VsrqError


def check_device(device: str) -> torch.device:
    """The torch device named ``device``, or one clear error when this machine has no such device."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VsrqError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VsrqError(f"device {device!r} requested but this torch build sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise VsrqError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if dev.type not in ("cpu", "cuda"):
        raise VsrqError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none): VNNI, AVX512-BF16 and AMX decide
    which oneDNN kernels run, so speed, and the rounding of float results, depend on them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), ()))
