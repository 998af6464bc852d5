"""Test datasets with generated LR: ground truth on disk, LR made in code by the named degradation.

Vid4 ground truth is looked up in ``$VSRQ_DATA/vid4/GT``, then ``../shared/data/vid4/GT`` from the
working directory and from the source checkout. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsrq.data.degrade import degrade
from vsrq.data.sources import discover_clips
from vsrq.errors import VsrqError

DATA_ENV = "VSRQ_DATA"
KNOWN = {"vid4": "vid4/GT"}


@dataclass
class PairedClip:
    """A clip's ground truth and its generated LR, (T, H, W, 3) uint8 each."""

    name: str
    gt: np.ndarray
    lr: np.ndarray


def data_roots() -> list[Path]:
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]))
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    return roots


def find_dataset(name: str) -> Path | None:
    """The ground-truth folder of a known dataset, or None where this machine lacks it."""
    if name not in KNOWN:
        raise VsrqError(f"unknown dataset {name!r}; known: {', '.join(sorted(KNOWN))}")
    for root in data_roots():
        candidate = root / KNOWN[name]
        if candidate.is_dir():
            return candidate
    return None


def load_paired(name: str, degradation: str, max_frames: int | None = None) -> list[PairedClip]:
    """Every clip of dataset ``name`` with LR from ``degradation`` ('bi' or 'bd')."""
    root = find_dataset(name)
    if root is None:
        tried = ", ".join(str(r / KNOWN[name]) for r in data_roots())
        raise VsrqError(f"dataset {name} not found (tried {tried}); set {DATA_ENV}")
    out = []
    for clip in discover_clips(root):
        gt = clip.load(max_frames)
        lr = np.stack([degrade(f, degradation) for f in gt])
        out.append(PairedClip(clip.name, gt, lr))
    return out
