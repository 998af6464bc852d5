"""Captured denoiser inputs: the calibration data of a diffusion model.

A diffusion VSR model is quantized in its denoiser, which never sees LR clips directly: it sees
noisy latents ``x_t`` at timesteps ``t`` with their conditions. Calibration therefore runs on inputs
captured from the float sampler (Q-Diffusion's and QuantVSR's practice), one item per clip window
and denoising step, each holding the frames of one window along its first axis.

Captures stream to disk as they are made: :class:`CaptureWriter` keeps at most one shard of items in
memory (``shard_items`` items, stored as float16) and writes each shard as a safetensors file, so RAM
does not grow with the number of samples (QuantVSR's original keeps every sample in RAM, about 26 GB).
A finished capture is a folder with ``index.json`` (names, frames per item, per-shard SHA-256, the facts
that make it reusable) and is read back lazily, one shard at a time, by :meth:`CapturedInputs.from_folder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vsrq.errors import VsrqError

INDEX = "index.json"
CAPTURE_FORMAT = 1


def tensors_sha256(items: Sequence[dict[str, torch.Tensor]]) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for item in items:
        for key in sorted(item):
            t = item[key].detach().contiguous().cpu()
            h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _stored(t: torch.Tensor) -> torch.Tensor:
    """Floating tensors as float16 (half the disk and RAM of a shard), others as they are."""
    t = t.detach().contiguous().cpu()
    return t.half() if t.is_floating_point() else t


class ShardedItems(Sequence):
    """Items read from a capture folder one shard at a time (the last shard read stays cached)."""

    def __init__(self, folder: Path, shards: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.where: list[tuple[int, int]] = [(s, i) for s, shard in enumerate(shards) for i in range(shard["items"])]
        self.shards = shards
        self._cached: tuple[int, list[dict[str, torch.Tensor]]] | None = None

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        shard, position = self.where[index]
        if self._cached is None or self._cached[0] != shard:
            self._cached = (shard, self._read(shard))
        return self._cached[1][position]

    def _read(self, shard: int) -> list[dict[str, torch.Tensor]]:
        info = self.shards[shard]
        path = self.folder / info["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                flat = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a missing, truncated or foreign file
            raise VsrqError(f"{path}: captured shard unreadable ({type(exc).__name__}); delete {self.folder} "
                            "to capture again") from None
        stored = [{key.split("/", 1)[1]: v for key, v in flat.items() if key.startswith(f"{i}/")}
                  for i in range(info["items"])]
        if tensors_sha256(stored) != info["sha256"]:
            raise VsrqError(f"{path}: captured shard does not match its index (SHA-256); delete {self.folder} "
                            "to capture again")
        items = [{k: v.float() if v.is_floating_point() else v for k, v in item.items()} for item in stored]
        return items


@dataclass
class CapturedInputs:
    """Denoiser inputs, one dict of tensors per item (the same keys in all), with their provenance."""

    items: Sequence[dict[str, torch.Tensor]]
    names: list[str]
    frames: list[int]  # frames per item (each item's tensors hold one window along their first axis)
    sha256: str
    description: str
    facts: dict[str, Any] = field(default_factory=dict)  # what the capture was made from (model, sampler, steps)

    @classmethod
    def from_items(cls, items: list[dict[str, torch.Tensor]], names: list[str], description: str) -> "CapturedInputs":
        """Items held in memory (tests, small captures)."""
        if not items:
            raise VsrqError("no captured inputs to calibrate on")
        keys = set(items[0])
        if any(set(item) != keys for item in items) or len(names) != len(items) or "x" not in keys:
            raise VsrqError("captured inputs must all hold the same tensors (an 'x' among them), one name per item")
        return cls(items, names, [int(item["x"].shape[0]) for item in items], tensors_sha256(items), description)

    @classmethod
    def from_folder(cls, folder: str | Path, expect: dict[str, Any] | None = None) -> "CapturedInputs":
        """A capture written by :class:`CaptureWriter`; ``expect`` are facts it must have been made with."""
        folder = Path(folder)
        try:
            index = json.loads((folder / INDEX).read_text())
        except (OSError, ValueError):
            raise VsrqError(f"{folder}: not a capture folder (no readable {INDEX})") from None
        if index.get("format") != CAPTURE_FORMAT:
            raise VsrqError(f"{folder}: capture format {index.get('format')} is not {CAPTURE_FORMAT}; capture again")
        for key, value in (expect or {}).items():
            if index["facts"].get(key) != value:
                raise VsrqError(f"{folder}: captured with {key}={index['facts'].get(key)!r}, not {value!r}: "
                                "these inputs belong to another model or sampler setting")
        items = ShardedItems(folder, index["shards"])
        return cls(items, index["names"], index["frames"], index["sha256"], index["description"], index["facts"])

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shortest(self) -> int:
        """Frames in the shortest item."""
        return min(self.frames)

    def manifest(self) -> dict:
        return {"clips": self.names, "sha256": self.sha256, "description": self.description, **self.facts}


class CaptureWriter:
    """Writes captured items to ``folder`` in shards; the folder appears only when :meth:`close` succeeds.

    At most ``shard_items`` items are held in memory at once (as float16).
    """

    def __init__(self, folder: str | Path, facts: dict[str, Any], description: str, shard_items: int = 16) -> None:
        if shard_items < 1:
            raise VsrqError("a capture shard holds at least one item")
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".partial", dir=self.folder.parent))
        self.facts, self.description, self.shard_items = facts, description, shard_items
        self.buffer: list[dict[str, torch.Tensor]] = []
        self.names: list[str] = []
        self.frames: list[int] = []
        self.shards: list[dict[str, Any]] = []
        self.peak_buffered = 0  # the most items ever held at once (the RAM bound, observed)

    def add(self, name: str, item: dict[str, torch.Tensor]) -> None:
        self.buffer.append({k: _stored(v) for k, v in item.items()})
        self.names.append(name)
        self.frames.append(int(item["x"].shape[0]))
        self.peak_buffered = max(self.peak_buffered, len(self.buffer))
        if len(self.buffer) >= self.shard_items:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        file = f"shard_{len(self.shards):05d}.safetensors"
        flat = {f"{i}/{k}": v for i, item in enumerate(self.buffer) for k, v in item.items()}
        save_file(flat, str(self.tmp / file))
        self.shards.append({"file": file, "items": len(self.buffer), "sha256": tensors_sha256(self.buffer)})
        self.buffer = []

    def close(self) -> CapturedInputs:
        """Write the last shard and the index, move the folder into place, and open it for reading."""
        self._flush()
        if not self.shards:
            self.abort()
            raise VsrqError("the capture recorded no denoiser inputs")
        digest = hashlib.sha256("".join(s["sha256"] for s in self.shards).encode()).hexdigest()
        index = {"format": CAPTURE_FORMAT, "names": self.names, "frames": self.frames, "shards": self.shards,
                 "sha256": digest, "description": self.description, "facts": self.facts}
        (self.tmp / INDEX).write_text(json.dumps(index, indent=1))
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self.tmp, self.folder)
        return CapturedInputs.from_folder(self.folder)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
