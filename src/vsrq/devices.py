"""Where torch work runs: one check that turns a device name into a torch device or one clear error."""

from __future__ import annotations

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
