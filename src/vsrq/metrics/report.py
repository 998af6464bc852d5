"""Per-frame, per-clip and dataset scores, reported the way VSR papers do.

The dataset figure is the mean over clips of each clip's mean over frames (BasicSR's Vid4 and
REDS4 tables), not the mean over all frames.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from vsrq.data.sources import Clip, discover_clips
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, ssim
from vsrq.progress import progress


@dataclass
class ClipScores:
    name: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray, crop: int, y: bool) -> None:
        self.psnr.append(psnr(pred, gt, crop, y))
        self.ssim.append(ssim(pred, gt, crop, y))

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


@dataclass
class EvalReport:
    clips: list[ClipScores]
    y: bool
    crop: int

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([c.mean_psnr for c in self.clips]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([c.mean_ssim for c in self.clips]))

    def to_dict(self) -> dict:
        return {
            "channel": "y" if self.y else "rgb",
            "crop_border": self.crop,
            "mean": {"psnr": self.mean_psnr, "ssim": self.mean_ssim},
            "clips": [
                {"name": c.name, "psnr": c.mean_psnr, "ssim": c.mean_ssim, "frames": {"psnr": c.psnr, "ssim": c.ssim}}
                for c in self.clips
            ],
        }

    def to_markdown(self) -> str:
        chan = "Y" if self.y else "RGB"
        lines = [f"| clip | frames | PSNR ({chan}) | SSIM ({chan}) |", "| --- | ---: | ---: | ---: |"]
        for c in self.clips:
            lines.append(f"| {c.name or '-'} | {len(c.psnr)} | {c.mean_psnr:.3f} | {c.mean_ssim:.4f} |")
        lines.append(f"| **mean** | {sum(len(c.psnr) for c in self.clips)} | **{self.mean_psnr:.3f}** | **{self.mean_ssim:.4f}** |")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip", "frame", "psnr", "ssim"])
            for c in self.clips:
                for i, (p, s) in enumerate(zip(c.psnr, c.ssim)):
                    w.writerow([c.name, i, f"{p:.6f}", f"{s:.6f}"])
                w.writerow([c.name, "mean", f"{c.mean_psnr:.6f}", f"{c.mean_ssim:.6f}"])
            w.writerow(["all", "mean", f"{self.mean_psnr:.6f}", f"{self.mean_ssim:.6f}"])


def score_clip(name: str, preds: Iterable[np.ndarray], gts: Iterable[np.ndarray], y: bool, crop: int) -> ClipScores:
    """Scores of one clip from two frame streams that must have equal length."""
    scores = ClipScores(name)
    sentinel = object()
    pi, gi = iter(preds), iter(gts)
    while True:
        p, g = next(pi, sentinel), next(gi, sentinel)
        if p is sentinel and g is sentinel:
            return scores
        if p is sentinel or g is sentinel:
            raise VsrqError(f"clip {name or '-'}: prediction and ground truth have different frame counts")
        scores.add(p, g, crop, y)


def _pair_clips(preds: list[Clip], gts: list[Clip]) -> list[tuple[Clip, Clip]]:
    if len(preds) == 1 and len(gts) == 1:
        return [(preds[0], gts[0])]
    gt_by_name = {c.name: c for c in gts}
    missing = [c.name for c in preds if c.name not in gt_by_name]
    if missing:
        raise VsrqError(f"no ground truth for clip(s) {', '.join(missing[:3])}")
    return [(p, gt_by_name[p.name]) for p in preds]


def evaluate_paths(pred: Path, gt: Path, y: bool = False, crop: int = 0, show_progress: bool = True) -> EvalReport:
    """Compare a prediction tree with a ground-truth tree of the same layout."""
    pairs = _pair_clips(discover_clips(pred), discover_clips(gt))
    for p, g in pairs:
        if (p.height, p.width) != (g.height, g.width):
            raise VsrqError(f"clip {p.name or '-'}: prediction is {p.width}x{p.height}, ground truth {g.width}x{g.height}")
        if p.num_frames is not None and g.num_frames is not None and p.num_frames != g.num_frames:
            raise VsrqError(f"clip {p.name or '-'}: {p.num_frames} predicted frames, {g.num_frames} ground-truth frames")
    clips = []
    with progress(total=sum(p.num_frames or 0 for p, _ in pairs) or None, desc="eval", unit="frame", enabled=show_progress) as bar:
        for p, g in pairs:
            scores = score_clip(p.name, p.frames(), g.frames(), y, crop)
            bar.update(len(scores.psnr))
            clips.append(scores)
    return EvalReport(clips, y, crop)
