"""Captured denoiser inputs: the calibration data of a diffusion model.

A diffusion VSR model is quantized in its denoiser, which never sees LR clips directly: it sees
noisy latents ``x_t`` at timesteps ``t`` with their conditions. Calibration therefore runs on inputs
captured from the float sampler (Q-Diffusion's and QuantVSR's practice), one item per clip window
and denoising step, each holding the frames of one window along its first axis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from vsrq.errors import VsrqError


def tensors_sha256(items: list[dict[str, torch.Tensor]]) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for item in items:
        for key in sorted(item):
            t = item[key].detach().contiguous().cpu()
            h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class CapturedInputs:
    """Denoiser inputs, one dict of tensors per item, all items with the same keys; recorded in manifests."""

    items: list[dict[str, torch.Tensor]]
    names: list[str]
    sha256: str
    description: str

    @classmethod
    def from_items(cls, items: list[dict[str, torch.Tensor]], names: list[str], description: str) -> "CapturedInputs":
        if not items:
            raise VsrqError("no captured inputs to calibrate on")
        keys = set(items[0])
        if any(set(item) != keys for item in items) or len(names) != len(items):
            raise VsrqError("captured inputs must all hold the same tensors, one name per item")
        return cls(items, names, tensors_sha256(items), description)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shortest(self) -> int:
        """Frames in the shortest item (every item holds one window along its first axis)."""
        return min(int(item["x"].shape[0]) for item in self.items)

    def manifest(self) -> dict:
        return {"clips": self.names, "sha256": self.sha256, "description": self.description}
