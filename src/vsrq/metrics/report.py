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
from itertools import zip_longest
from pathlib import Path
from typing import Iterable

import numpy as np

from vsrq.data.sources import Clip, discover_clips
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, ssim
from vsrq.metrics.temporal import Flow, TemporalMeter
from vsrq.models.spynet import official_spynet
from vsrq.progress import progress


@dataclass
class ClipScores:
    name: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    tof: list[float] = field(default_factory=list)  # one per consecutive pair, when temporal scores were asked for
    ewarp: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray, crop: int, y: bool) -> None:
        self.psnr.append(psnr(pred, gt, crop, y))
        self.ssim.append(ssim(pred, gt, crop, y))

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def mean_tof(self) -> float | None:
        return float(np.mean(self.tof)) if self.tof else None

    @property
    def mean_ewarp(self) -> float | None:
        return float(np.mean(self.ewarp)) if self.ewarp else None


def _mean_of(values: list[float | None]) -> float | None:
    """Mean of the values present; None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class EvalReport:
    clips: list[ClipScores]
    y: bool
    crop: int
    temporal: bool = False

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([c.mean_psnr for c in self.clips]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([c.mean_ssim for c in self.clips]))

    @property
    def mean_tof(self) -> float | None:
        return _mean_of([c.mean_tof for c in self.clips])

    @property
    def mean_ewarp(self) -> float | None:
        return _mean_of([c.mean_ewarp for c in self.clips])

    def to_dict(self) -> dict:
        mean: dict = {"psnr": self.mean_psnr, "ssim": self.mean_ssim}
        clips = []
        for c in self.clips:
            entry: dict = {"name": c.name, "psnr": c.mean_psnr, "ssim": c.mean_ssim}
            frames: dict = {"psnr": c.psnr, "ssim": c.ssim}
            if self.temporal:
                entry.update(tof=c.mean_tof, ewarp=c.mean_ewarp)
                frames.update(tof=[None, *c.tof], ewarp=[None, *c.ewarp])
            clips.append({**entry, "frames": frames})
        if self.temporal:
            mean.update(tof=self.mean_tof, ewarp=self.mean_ewarp)
        return {"channel": "y" if self.y else "rgb", "crop_border": self.crop, "mean": mean, "clips": clips}

    def to_markdown(self) -> str:
        chan = "Y" if self.y else "RGB"
        head, rule = f"| clip | frames | PSNR ({chan}) | SSIM ({chan}) |", "| --- | ---: | ---: | ---: |"
        if self.temporal:
            head, rule = head + " tOF (px) | E_warp (x1e-3) |", rule + " ---: | ---: |"
        lines = [head, rule]
        for c in self.clips:
            row = f"| {c.name or '-'} | {len(c.psnr)} | {c.mean_psnr:.3f} | {c.mean_ssim:.4f} |"
            if self.temporal:
                row += f" {_fmt(c.mean_tof, '.3f')} | {_fmt(c.mean_ewarp, '.3f')} |"
            lines.append(row)
        frames = sum(len(c.psnr) for c in self.clips)
        row = f"| **mean** | {frames} | **{self.mean_psnr:.3f}** | **{self.mean_ssim:.4f}** |"
        if self.temporal:
            row += f" **{_fmt(self.mean_tof, '.3f')}** | **{_fmt(self.mean_ewarp, '.3f')}** |"
        lines.append(row)
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")

    def write_csv(self, path: Path) -> None:
        """One row per frame, per clip mean and the dataset mean; temporal cells are blank where absent."""

        def cells(*values: float | None) -> list[str]:
            return ["" if v is None else f"{v:.6f}" for v in (values if self.temporal else values[:2])]

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip", "frame", "psnr", "ssim"] + (["tof", "ewarp"] if self.temporal else []))
            for c in self.clips:
                for i, values in enumerate(zip_longest(c.psnr, c.ssim, [None, *c.tof], [None, *c.ewarp])):
                    w.writerow([c.name, i, *cells(*values)])
                w.writerow([c.name, "mean", *cells(c.mean_psnr, c.mean_ssim, c.mean_tof, c.mean_ewarp)])
            w.writerow(["all", "mean", *cells(self.mean_psnr, self.mean_ssim, self.mean_tof, self.mean_ewarp)])


def score_clip(name: str, preds: Iterable[np.ndarray], gts: Iterable[np.ndarray], y: bool, crop: int,
               flow: Flow | None = None) -> ClipScores:
    """Scores of one clip from two frame streams that must have equal length; temporal ones when ``flow`` is given."""
    scores = ClipScores(name)
    meter = TemporalMeter(flow, crop) if flow is not None else None
    sentinel = object()
    pi, gi = iter(preds), iter(gts)
    while True:
        p, g = next(pi, sentinel), next(gi, sentinel)
        if p is sentinel and g is sentinel:
            return scores
        if p is sentinel or g is sentinel:
            raise VsrqError(f"clip {name or '-'}: prediction and ground truth have different frame counts")
        scores.add(p, g, crop, y)
        pair = meter.add(p, g) if meter is not None else None
        if pair is not None:
            scores.tof.append(pair.tof)
            scores.ewarp.append(pair.ewarp)


def _pair_clips(preds: list[Clip], gts: list[Clip]) -> list[tuple[Clip, Clip]]:
    if len(preds) == 1 and len(gts) == 1:
        return [(preds[0], gts[0])]
    gt_by_name = {c.name: c for c in gts}
    missing = [c.name for c in preds if c.name not in gt_by_name]
    if missing:
        raise VsrqError(f"no ground truth for clip(s) {', '.join(missing[:3])}")
    return [(p, gt_by_name[p.name]) for p in preds]


def evaluate_paths(pred: Path, gt: Path, y: bool = False, crop: int = 0, show_progress: bool = True,
                   temporal: bool = False) -> EvalReport:
    """Compare a prediction tree with a ground-truth tree of the same layout; ``temporal`` adds tOF and E_warp."""
    pairs = _pair_clips(discover_clips(pred), discover_clips(gt))
    for p, g in pairs:
        if (p.height, p.width) != (g.height, g.width):
            raise VsrqError(f"clip {p.name or '-'}: prediction is {p.width}x{p.height}, ground truth {g.width}x{g.height}")
        if p.num_frames is not None and g.num_frames is not None and p.num_frames != g.num_frames:
            raise VsrqError(f"clip {p.name or '-'}: {p.num_frames} predicted frames, {g.num_frames} ground-truth frames")
    flow = official_spynet() if temporal else None
    clips = []
    with progress(total=sum(p.num_frames or 0 for p, _ in pairs) or None, desc="eval", unit="frame", enabled=show_progress) as bar:
        for p, g in pairs:
            scores = score_clip(p.name, p.frames(), g.frames(), y, crop, flow)
            bar.update(len(scores.psnr))
            clips.append(scores)
    return EvalReport(clips, y, crop, temporal)
