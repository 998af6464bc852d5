"""Pictures of an evaluation, drawn with matplotlib (``pip install vsrq[report]``) as PNG files.

* per-frame Y-PSNR (or RGB) curves: one panel per clip, one line per prediction;
* temporal profiles (QuantVSR Fig. 5): one image row of every frame stacked downwards, for the ground
  truth and each prediction side by side, so flicker shows as horizontal streaks;
* side-by-side crops of one frame per clip, cut where the predictions differ most;
* ``index.md``, which embeds them beside the score tables and the metrics that could not run.

Frames are read again from disk for the profiles and crops, one at a time, so memory stays bounded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vsrq.data.frames import atomic_output
from vsrq.data.sources import Clip, discover_clips
from vsrq.errors import require
from vsrq.metrics.report import EvalReport

CROP = 128  # side of the crops
DPI = 100


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no screen needed)."""
    require("matplotlib", "report", "drawing pictures").use("Agg")
    return require("matplotlib.pyplot", "report", "drawing pictures")


def _save(fig: Any, path: Path) -> None:
    """Write the figure whole or not at all."""
    plt = _pyplot()
    with atomic_output(Path(path), overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def psnr_figure(reports: dict[str, EvalReport], path: Path, key: str = "psnr") -> None:
    """Per-frame ``key`` of every clip, each prediction a line; infinite PSNR (identical frames) is drawn at
    the top of the axis."""
    plt = _pyplot()
    first = next(iter(reports.values()))
    names = [c.name for c in first.clips]
    cols = min(len(names), 2)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, report in reports.items():
            clip = next(c for c in report.clips if c.name == name)
            values = np.array([np.nan if v is None else v for v in clip.values.get(key, [])], dtype=float)
            finite = values[np.isfinite(values)]
            top = finite.max() + 1 if finite.size else 50.0
            values[np.isposinf(values)] = top
            mean = clip.mean(key)
            ax.plot(np.arange(len(values)), values, marker="." if len(values) < 3 else None,
                    label=f"{label} ({mean:.2f})" if mean is not None and math.isfinite(mean) else label)
        ax.set_title(name or "clip")
        ax.set_xlabel("frame")
        ax.set_ylabel(first.label(key))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def write_psnr_plot(report: EvalReport, path: Path) -> None:
    """``vsrq eval --plot``: the per-frame PSNR of one prediction as a PNG."""
    psnr_figure({"prediction": report}, path)


def _clips_by_name(root: Path) -> dict[str, Clip]:
    return {c.name: c for c in discover_clips(root)}


def _gather(clip: Clip, row: int, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(the image row ``row`` of every frame stacked, frame ``frame_index``), one frame in memory at a time."""
    rows, chosen = [], None
    for i, frame in enumerate(clip.frames()):
        rows.append(frame[min(row, frame.shape[0] - 1)])
        if i == frame_index:
            chosen = frame
    return np.stack(rows), chosen if chosen is not None else frame


def _crop_box(frames: list[np.ndarray]) -> tuple[int, int, int]:
    """(top, left, side) of the square where the last image differs most from the first (the middle when they
    are the same or there is one)."""
    h, w = frames[0].shape[:2]
    side = min(CROP, h, w)
    if len(frames) < 2:
        return (h - side) // 2, (w - side) // 2, side
    diff = np.abs(frames[-1].astype(np.float64) - frames[0]).sum(2)
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    if not sums.any():
        return (h - side) // 2, (w - side) // 2, side
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def pictures(preds: dict[str, Path], gt: Path | None, out: Path) -> list[tuple[str, str]]:
    """Temporal profiles and crops of each clip into ``out``: [(clip name, PNG file name), ...] per kind."""
    plt = _pyplot()
    sources = {**({"ground truth": gt} if gt is not None else {}), **preds}
    trees = {label: _clips_by_name(root) for label, root in sources.items()}
    first = next(iter(preds))
    written = []
    for index, name in enumerate(trees[first]):
        clips = {label: tree[name] for label, tree in trees.items() if name in tree}
        clip0 = clips[first]
        row, middle = clip0.height // 2, (clip0.num_frames or 1) // 2
        gathered = {label: _gather(c, row, middle) for label, c in clips.items()}
        stem = f"{index:02d}"
        fig, axes = plt.subplots(1, len(gathered), figsize=(3.6 * len(gathered), 3.6), squeeze=False)
        for ax, (label, (profile, _)) in zip(axes[0], gathered.items()):
            ax.imshow(profile, aspect="auto", interpolation="nearest")
            ax.set_title(label, fontsize="small")
            ax.set_xlabel(f"x (row {row})")
            ax.set_ylabel("frame")
        fig.suptitle(f"{name or 'clip'}: temporal profile")
        fig.tight_layout()
        _save(fig, out / f"profile_{stem}.png")
        top, left, side = _crop_box([f for _, f in gathered.values()])
        fig, axes = plt.subplots(1, len(gathered), figsize=(2.6 * len(gathered), 2.9), squeeze=False)
        for ax, (label, (_, frame)) in zip(axes[0], gathered.items()):
            ax.imshow(frame[top: top + side, left: left + side], interpolation="nearest")
            ax.set_title(label, fontsize="small")
            ax.axis("off")
        fig.suptitle(f"{name or 'clip'}: frame {middle}, crop at ({left}, {top})", fontsize="small")
        fig.tight_layout()
        _save(fig, out / f"crop_{stem}.png")
        written.append((name, stem))
    return written


def write_report(reports: dict[str, EvalReport], preds: dict[str, Path], gt: Path | None, out: Path,
                 overwrite: bool = False) -> Path:
    """A folder with the score tables, per-frame curves, temporal profiles and crops, and an index.md that
    embeds them; written whole or not at all."""
    with atomic_output(Path(out), overwrite) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        first = next(iter(reports.values()))
        lines = ["# vsrq evaluation", ""]
        lines += [f"- {label}: `{preds[label]}`" for label in preds]
        lines += [f"- ground truth: `{gt}`" if gt is not None else "- no ground truth (no-reference metrics only)", ""]
        for label, report in reports.items():
            lines += [f"## {label}", "", report.to_markdown(), ""]
        lines += ["## Metrics", "", first.availability(), ""]
        key = next((k for k in ("psnr", "niqe") if k in first.metrics), None)
        if key is not None:
            psnr_figure(reports, tmp / f"{key}_per_frame.png", key)
            lines += [f"## Per-frame {first.label(key)}", "", f"![per-frame {key}]({key}_per_frame.png)", ""]
        lines += ["## Temporal profiles and crops", ""]
        for name, stem in pictures(preds, gt, tmp):
            lines += [f"### {name or 'clip'}", "", f"![temporal profile](profile_{stem}.png)", "",
                      f"![crops](crop_{stem}.png)", ""]
        (tmp / "index.md").write_text("\n".join(lines))
    return Path(out)
