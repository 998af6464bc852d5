"""Per-frame, per-clip and dataset scores, reported the way VSR papers do.

The dataset figure is the mean over clips of each clip's mean over frames (BasicSR's Vid4 and
REDS4 tables), not the mean over all frames. Temporal scores (tOF, E_warp; :mod:`vsrq.metrics.temporal`)
belong to consecutive pairs: frame t holds the pair (t-1, t), so frame 0 and one-frame clips hold none,
and their dataset figure is the mean over the clips that have one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from vsrq.data.frames import atomic_output
from vsrq.data.sources import Clip, discover_clips
from vsrq.errors import VsrqError
from vsrq.metrics.suite import DEFAULT, METRICS, Suite, build_suite
from vsrq.progress import progress


@dataclass
class ClipScores:
    """Per-frame values of each metric; temporal ones hold None at frame 0 (no pair ends there)."""

    name: str
    values: dict[str, list[float | None]] = field(default_factory=dict)

    def record(self, index: int, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            column = self.values.setdefault(key, [])
            column.extend([None] * (index - len(column)))
            column.append(value)

    def pad(self, frames: int) -> None:
        """Every column one entry per frame (None where a metric gave nothing)."""
        for column in self.values.values():
            column.extend([None] * (frames - len(column)))

    def mean(self, key: str) -> float | None:
        return _mean_of(self.values.get(key, []))

    @property
    def frames(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    @property
    def psnr(self) -> list[float]:
        return [v for v in self.values.get("psnr", []) if v is not None]

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([v for v in self.values.get("ssim", []) if v is not None]))


def _mean_of(values: list[float | None]) -> float | None:
    """Mean of the values present; None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


SPECS = {"psnr": ".3f", "ssim": ".4f", "lpips": ".4f", "lpips_vgg": ".4f", "dists": ".4f", "niqe": ".3f"}


@dataclass
class EvalReport:
    """Scores of a prediction tree: per frame, per clip (mean over frames) and the dataset (mean of clip means)."""

    clips: list[ClipScores]
    y: bool
    crop: int
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT))
    labels: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def mean(self, key: str) -> float | None:
        return _mean_of([c.mean(key) for c in self.clips])

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([c.mean_psnr for c in self.clips]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([c.mean_ssim for c in self.clips]))

    def label(self, key: str) -> str:
        info = METRICS[key]
        label = self.labels.get(key, info.label)
        if key in ("psnr", "ssim"):
            label += " (Y)" if self.y else " (RGB)"
        return f"{label} ({info.unit})" if info.unit else label

    def to_dict(self) -> dict:
        clips = [{"name": c.name, "frames_scored": c.frames, **{k: c.mean(k) for k in self.metrics},
                  "frames": {k: c.values.get(k, []) for k in self.metrics}} for c in self.clips]
        info = {k: {"label": self.labels.get(k, METRICS[k].label), "unit": METRICS[k].unit,
                    "higher_better": METRICS[k].higher_better, "note": METRICS[k].note} for k in self.metrics}
        return {"channel": "y" if self.y else "rgb", "crop_border": self.crop, "metrics": info,
                "unavailable": self.unavailable, "mean": {k: self.mean(k) for k in self.metrics}, "clips": clips}

    def to_markdown(self) -> str:
        head = "| clip | frames | " + " | ".join(self.label(k) for k in self.metrics) + " |"
        lines = [head, "| --- | ---: |" + " ---: |" * len(self.metrics)]
        for c in self.clips:
            cells = [_fmt(c.mean(k), SPECS.get(k, ".3f")) for k in self.metrics]
            lines.append(f"| {c.name or '-'} | {c.frames} | " + " | ".join(cells) + " |")
        cells = [f"**{_fmt(self.mean(k), SPECS.get(k, '.3f'))}**" for k in self.metrics]
        lines.append(f"| **mean** | {sum(c.frames for c in self.clips)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def availability(self) -> str:
        """Which metrics ran and which could not, and why: a Markdown table."""
        lines = ["| metric | status |", "| --- | --- |"]
        lines += [f"| {self.label(k)} | ran{'; ' + METRICS[k].note if METRICS[k].note else ''} |" for k in self.metrics]
        lines += [f"| {k} | unavailable: {why} |" for k, why in self.unavailable.items()]
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        """Whole or not at all (a kill mid-write leaves the previous file or nothing)."""
        with atomic_output(Path(path), overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")

    def write_csv(self, path: Path) -> None:
        """One row per frame, per clip mean and the dataset mean; cells are blank where a metric has no value."""

        def cells(values: list[float | None]) -> list[str]:
            return ["" if v is None else f"{v:.6f}" for v in values]

        with atomic_output(Path(path), overwrite=True) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip", "frame", *self.metrics])
            for c in self.clips:
                for i in range(c.frames):
                    w.writerow([c.name, i, *cells([c.values.get(k, [])[i] if i < len(c.values.get(k, [])) else None
                                                   for k in self.metrics])])
                w.writerow([c.name, "mean", *cells([c.mean(k) for k in self.metrics])])
            w.writerow(["all", "mean", *cells([self.mean(k) for k in self.metrics])])


def score_clip(name: str, preds: Iterable[np.ndarray], gts: Iterable[np.ndarray] | None, y: bool, crop: int,
               suite: Suite | None = None) -> ClipScores:
    """Scores of one clip from two frame streams that must have equal length (``gts`` None: no-reference
    metrics only); ``suite`` defaults to PSNR and SSIM."""
    suite = suite or Suite(list(DEFAULT), {}, {}, y, crop)
    scores = ClipScores(name)
    meters = suite.meters()
    sentinel = object()
    pi = iter(preds)
    gi = iter(gts) if gts is not None else None
    index = 0
    while True:
        p = next(pi, sentinel)
        g = next(gi, sentinel) if gi is not None else None
        if p is sentinel and (gi is None or g is sentinel):
            scores.pad(index)
            for key in suite.names:
                scores.values.setdefault(key, [None] * index)
            return scores
        if p is sentinel or g is sentinel:
            raise VsrqError(f"clip {name or '-'}: prediction and ground truth have different frame counts")
        if g is not None and p.shape != g.shape:
            raise VsrqError(f"clip {name or '-'} frame {index}: prediction is {p.shape[1]}x{p.shape[0]}, "
                            f"ground truth {g.shape[1]}x{g.shape[0]}")
        for meter in meters:
            scores.record(index, meter.add(p, g))
        index += 1


def _pair_clips(preds: list[Clip], gts: list[Clip]) -> list[tuple[Clip, Clip]]:
    if len(preds) == 1 and len(gts) == 1:
        return [(preds[0], gts[0])]
    gt_by_name = {c.name: c for c in gts}
    missing = [c.name for c in preds if c.name not in gt_by_name]
    if missing:
        raise VsrqError(f"no ground truth for clip(s) {', '.join(missing[:3])}")
    return [(p, gt_by_name[p.name]) for p in preds]


def evaluate_paths(pred: Path, gt: Path | None = None, y: bool = False, crop: int = 0, show_progress: bool = True,
                   metrics: list[str] | None = None) -> EvalReport:
    """Score a prediction tree, against a ground-truth tree of the same layout when ``gt`` is given.

    ``metrics`` (default PSNR and SSIM) are names of :data:`~vsrq.metrics.suite.METRICS`; those whose
    weights are absent are listed in the report's ``unavailable``. Without ``gt`` only no-reference
    metrics may be asked for.
    """
    names = list(metrics or DEFAULT)
    if gt is None:
        needs = [n for n in names if METRICS[n].needs_gt]
        if needs:
            raise VsrqError(f"{', '.join(needs)} need ground truth: pass GT frames, or ask only for "
                            f"no-reference metrics ({', '.join(k for k, v in METRICS.items() if not v.needs_gt)})")
    preds = discover_clips(pred)
    pairs = _pair_clips(preds, discover_clips(gt)) if gt is not None else [(p, None) for p in preds]
    for p, g in pairs:
        if g is None:
            continue
        if (p.height, p.width) != (g.height, g.width):
            raise VsrqError(f"clip {p.name or '-'}: prediction is {p.width}x{p.height}, ground truth {g.width}x{g.height}")
        if p.num_frames is not None and g.num_frames is not None and p.num_frames != g.num_frames:
            raise VsrqError(f"clip {p.name or '-'}: {p.num_frames} predicted frames, {g.num_frames} ground-truth frames")
    suite = build_suite(names, y, crop)
    if suite.temporal:
        short = [p.name or "-" for p, _ in pairs if p.num_frames is not None and p.num_frames < 2]
        if short:
            raise VsrqError(f"{', '.join(suite.temporal)} score consecutive frames; clip {short[0]} has one frame")
    clips = []
    with progress(total=sum(p.num_frames or 0 for p, _ in pairs) or None, desc="eval", unit="frame", enabled=show_progress) as bar:
        for p, g in pairs:
            scores = score_clip(p.name, p.frames(), g.frames() if g is not None else None, y, crop, suite)
            bar.update(scores.frames)
            clips.append(scores)
    return EvalReport(clips, y, crop, suite.names, suite.labels, suite.unavailable)
