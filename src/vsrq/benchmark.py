"""Benchmarks: methods x bit-widths x scopes on a dataset, as paper-style rows and tables.

The portable core `vsrq benchmark` runs on; the project's own sweeps (git stamping, file locks among
processes) build on it in ``bench/harness.py``, outside the installed package.

Every quality benchmark writes ``bench/results/<bench>.json``, a list of rows with the fields of
:class:`Row` (FP rows have method "fp" and 32 bits), and a Markdown table beside it. ``quick``
mode scores the first ``QUICK_FRAMES`` frames of each clip (at full resolution); ``full`` scores
every frame. Each clip is super-resolved whole, as the papers do.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from vsrq.config import CalibConfig, QuantConfig
from vsrq.data.clips import CalibrationSet, calibration_for, load_calibration
from vsrq.data.datasets import PairedClip, load_paired
from vsrq.devices import check_device
from vsrq.memory import peak_rss_mb, reset_peak_rss
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.psnr_ssim import tensor_to_uint8
from vsrq.metrics.report import ClipScores, score_clip
from vsrq.models.catalog import LoadedModel, load_model
from vsrq.progress import progress
from vsrq.quant import accounting
from vsrq.quant.qmodel import QuantizedModel
from vsrq.runtime.deployable import deployability
from vsrq.version import __version__

QUICK_FRAMES = 10


@dataclass
class Row:
    """One result row; field names are the project's results schema."""

    model: str
    method: str
    wbits: int
    abits: int
    scope: str | None
    dataset: str
    degradation: str
    frames: str
    psnr_y: float
    ssim_y: float
    fab: float
    size_mb: float
    calib_s: float | None
    notes: str = ""
    commit: str = ""
    date: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


def today() -> str:
    return datetime.date.today().isoformat()


def super_resolve(model: nn.Module, lr: np.ndarray, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """A whole clip (T, h, w, 3) uint8 -> (T, 4h, 4w, 3) uint8, computed on ``device`` (where the model is)."""
    x = torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)[None].to(device)
    with torch.inference_mode():
        return tensor_to_uint8(model(x)[0])


def score_dataset(
    model: nn.Module, clips: list[PairedClip], show_progress: bool = True, desc: str = "eval",
    device: torch.device = torch.device("cpu"),
) -> tuple[list[ClipScores], list[float]]:
    """Y-channel PSNR/SSIM per clip (no border crop), each clip super-resolved whole, and each clip's FAB.

    FAB is read after the clip ran, so per-video bit choices (FG-VBA) are counted for the clip that made them.
    """
    scores, fabs = [], []
    with progress(total=sum(len(c.lr) for c in clips), desc=desc, unit="frame", enabled=show_progress) as bar:
        for clip in clips:
            sr = super_resolve(model, clip.lr, device)
            scores.append(score_clip(clip.name, list(sr), list(clip.gt), y=True, crop=0))
            fabs.append(accounting.count(model).fab)
            bar.update(len(clip.lr))
    return scores, fabs


def mean_scores(scores: list[ClipScores]) -> tuple[float, float]:
    return float(np.mean([s.mean_psnr for s in scores])), float(np.mean([s.mean_ssim for s in scores]))


def size_mb(model: nn.Module) -> float:
    """FP32-equivalent size in MB (b-bit numbers counted as b/32 of a float)."""
    return accounting.count(model).params_effective * 4.0


@dataclass
class Bench:
    """Shared state of one benchmark run: the model, the data and the calibration set, loaded once."""

    name: str
    model_name: str
    dataset: str
    degradation: str
    quick: bool
    calib_config: CalibConfig | None = None
    seed: int = 0
    show_progress: bool = True
    device: str = "cpu"  # where calibration and scoring compute; rows record it when it is not the CPU
    loaded: LoadedModel = field(init=False)
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loaded = load_model(self.model_name)
        if self.calib_config is not None:  # a BD model's default clips are degraded by BD (calibration_for)
            self.calib_config = calibration_for(self.calib_config, self.loaded.degradation)
        self._clips: list[PairedClip] | None = None
        self.commit, self.date = self.stamp(), today()
        self._calib: CalibrationSet | None = None
        self.last_peak_rss_mb: int | None = None

    def stamp(self) -> str:
        """What made the rows: vsrq's version (the project's own sweeps record the git commit)."""
        return f"vsrq {__version__}"

    @contextmanager
    def exclusive(self, results_dir: Path) -> Iterator[None]:
        """Held while the results file is merged; one process at a time needs no lock (the project's sweeps,
        several processes on one file, take a file lock)."""
        yield

    @property
    def calib(self) -> CalibrationSet:
        """The calibration clips, cut once on first use."""
        if self._calib is None:
            if self.calib_config is None:
                raise ValueError(f"benchmark {self.name} has no calibration config")
            self._calib = load_calibration(self.calib_config, self.seed)
        return self._calib

    @property
    def clips(self) -> list[PairedClip]:
        """The scored clips, read on first use: a run that only calibrates needs no test data."""
        if self._clips is None:
            self._clips = load_paired(self.dataset, self.degradation, QUICK_FRAMES if self.quick else None)
        return self._clips

    @clips.setter
    def clips(self, clips: list[PairedClip]) -> None:
        self._clips = clips

    @property
    def frames(self) -> str:
        return "quick" if self.quick else "full"

    def row(self, model: nn.Module, method: str, wbits: int, abits: int, scope: str | None,
            calib_s: float | None, notes: str = "", per_frame: bool = False, **extra: Any) -> Row:
        """Score ``model`` on the benchmark clips and record a row; ``per_frame`` keeps each clip's per-frame
        Y-PSNR too (``psnr_y_frames``: where along a clip a model loses)."""
        dev = check_device(self.device)
        calibrated_on = model.manifest.get("notes", {}).get("calibrated_on") if isinstance(model, QuantizedModel) else None
        if dev.type != "cpu" or calibrated_on:  # a GPU calibrated or scored the row
            extra = {"device": calibrated_on or torch.cuda.get_device_name(dev), **extra}
            if dev.type == "cpu":
                extra["scored_on"] = "cpu"
        if isinstance(model, QuantizedModel):  # all-integer with static ranges, or not (vsrq.runtime.deployable)
            extra = {"deployable": deployability(model.manifest)["deployable"], **extra}
        scores, fabs = score_dataset(model.to(dev), self.clips, self.show_progress, f"{method} W{wbits}A{abits}", dev)
        model.to("cpu")
        psnr, ssim = mean_scores(scores)
        per_clip = {s.name: {"psnr_y": round(s.mean_psnr, 4), "ssim_y": round(s.mean_ssim, 5), "fab": round(f, 3)}
                    for s, f in zip(scores, fabs)}
        if per_frame:
            for s in scores:
                per_clip[s.name]["psnr_y_frames"] = [round(v, 4) for v in s.psnr]
        row = Row(self.model_name, method, wbits, abits, scope, self.dataset, self.degradation, self.frames,
                  round(psnr, 4), round(ssim, 5), round(float(np.mean(fabs)), 3), round(size_mb(model), 4),
                  None if calib_s is None else round(calib_s, 1), notes, self.commit, self.date,
                  {"clips": per_clip, **extra})
        self.rows.append(row)
        return row

    def fp_row(self) -> Row:
        return self.row(self.loaded.model, "fp", 32, 32, None, None)

    def quantize(self, config: QuantConfig) -> tuple[nn.Module, float]:
        """Quantize the benchmark's model on its calibration set: (model, calibration seconds); the process's
        peak resident size during it lands in ``last_peak_rss_mb`` (None where the system cannot say)."""
        calib = self.calib  # cut before the measurement: the clips are the benchmark's, not the method's
        measured = reset_peak_rss()
        start = time.perf_counter()
        qm = quantize_model(self.loaded, config, calib, log=lambda s: None, show_progress=self.show_progress,
                            device=self.device)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb() if measured else None
        self.last_peak_rss_mb = None if peak is None else round(peak)
        return qm, seconds

    def quantized_row(self, config: QuantConfig, method_label: str | None = None, notes: str = "",
                      **extra: Any) -> tuple[Row, nn.Module]:
        """Quantize with ``config``, score, and record a row with the method's notes and the MACs per frame."""
        qm, calib_s = self.quantize(config)
        acct = accounting.count(qm, self._example())
        row = self.row(qm, method_label or config.method, config.wbits, config.abits, config.scope, calib_s, notes,
                       calib_clips=len(self.calib.clips), calib_sha256=self.calib.sha256[:16],
                       options=config.options, gmacs_per_frame=round(acct.macs / 2, 3),
                       gmacs_effective_per_frame=round(acct.macs_effective / 2, 3),
                       method_notes=qm.manifest["notes"], peak_rss_mb=self.last_peak_rss_mb, **extra)
        return row, qm

    def use_seed(self, seed: int) -> None:
        """Calibrate from now on on the sample ``seed`` cuts (QBasicVSR Table 5 varies the sample this way)."""
        if seed != self.seed:
            self.seed, self._calib = seed, None

    def seeded_row(self, config: QuantConfig, seeds: list[int], method_label: str | None = None, notes: str = "",
                   done: dict[int, Row] | None = None, on_seed: Callable[[int, Row], None] | None = None) -> Row:
        """One row of the mean and sample standard deviation over calibration samples ``seeds``: each seed
        cuts its own calibration clips and seeds the method. ``done`` holds rows measured before (a
        benchmark's cache); ``on_seed`` sees each new one as it is measured."""
        per_seed = dict(done or {})
        for seed in seeds:
            if seed in per_seed:
                continue
            per_seed[seed] = self.seed_row(config, seed, method_label, notes)
            if on_seed is not None:
                on_seed(seed, per_seed[seed])
        rows = [per_seed[s] for s in seeds]
        row = seed_summary(rows, seeds, notes)
        self.rows.append(row)
        return row

    def seed_row(self, config: QuantConfig, seed: int, method_label: str | None = None, notes: str = "") -> Row:
        """One calibration sample's row, kept out of ``rows`` (a summary row stands for the samples)."""
        self.use_seed(seed)
        row, _ = self.quantized_row(replace(config, seed=seed), method_label, notes)
        self.rows.remove(row)
        return row

    def _example(self) -> torch.Tensor:
        """Two frames at the first clip's LR size: accounting runs one forward on it."""
        lr = self.clips[0].lr[:2]
        return torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)[None]

    def write(self, results_dir: Path) -> tuple[Path, Path]:
        """Merge this run's rows into ``<name>.json``: rows of other frame modes, and rows another
        process wrote meanwhile, stay; a row with the same settings is replaced by this run's, and
        rows of this frame mode copied from another benchmark (notes "from ...") are this run's copies only."""
        path = results_dir / f"{self.name}.json"
        mine = {row_key(r.to_dict()): r.to_dict() for r in self.rows}
        merged = []
        with self.exclusive(results_dir):  # read-merge-write as one step among processes
            if path.is_file():
                for d in json.loads(path.read_text()):
                    key = row_key(d)
                    if key in mine:
                        merged.append(mine.pop(key))
                    elif not (str(d.get("notes", "")).startswith("from ") and d.get("frames") == self.frames):
                        merged.append(d)
            return write_results(merged + list(mine.values()), self.name, results_dir)

    def resume(self, results_dir: Path) -> None:
        """Keep the rows of an earlier run of this model in the same frames mode (every dataset), so an
        interrupted sweep goes on where it stopped."""
        path = results_dir / f"{self.name}.json"
        if not path.is_file():
            return
        names = {f.name for f in fields(Row)} - {"extra"}
        for d in json.loads(path.read_text()):
            if d.get("frames") == self.frames and d.get("model") == self.model_name:
                self.rows.append(Row(**{k: d[k] for k in names if k in d},
                                     extra={k: v for k, v in d.items() if k not in names}))

    def has(self, method: str, wbits: int, abits: int, scope: str | None, notes: str = "",
            dataset: str | None = None) -> bool:
        """Whether a row with these settings is already recorded on ``dataset`` (default: the current one; see
        :meth:`resume`)."""
        return any((r.dataset, r.method, r.wbits, r.abits, r.scope, r.notes)
                   == (dataset or self.dataset, method, wbits, abits, scope, notes) for r in self.rows)


def seed_summary(rows: list[Row], seeds: list[int], notes: str) -> Row:
    """The first row with ``psnr_y`` / ``ssim_y`` / ``calib_s`` the means over ``rows`` (one per seed), ``peak_rss_mb``
    their largest, plus ``psnr_y_std`` / ``ssim_y_std`` (sample standard deviation, n - 1), ``seeds`` and each seed's figures."""
    if len(rows) != len(seeds) or len(rows) < 2:
        raise ValueError("a seed summary needs one row per seed and at least two seeds")
    psnr = np.array([r.psnr_y for r in rows])
    ssim = np.array([r.ssim_y for r in rows])
    calib = [r.calib_s for r in rows if r.calib_s is not None]
    per_seed = [{"seed": s, "psnr_y": r.psnr_y, "ssim_y": r.ssim_y, "calib_s": r.calib_s,
                 "calib_sha256": r.extra.get("calib_sha256")} for s, r in zip(seeds, rows)]
    extra = {k: v for k, v in rows[0].extra.items() if k not in ("clips", "calib_sha256", "method_notes")}
    extra.update(psnr_y_std=round(float(psnr.std(ddof=1)), 4), ssim_y_std=round(float(ssim.std(ddof=1)), 5),
                 seeds=list(seeds), per_seed=per_seed)
    peaks = [r.extra["peak_rss_mb"] for r in rows if r.extra.get("peak_rss_mb") is not None]
    if peaks:
        extra["peak_rss_mb"] = max(peaks)  # the memory a user needs is the largest any sample took
    return replace(rows[0], psnr_y=round(float(psnr.mean()), 4), ssim_y=round(float(ssim.mean()), 5),
                   fab=round(float(np.mean([r.fab for r in rows])), 3),
                   calib_s=round(float(np.mean(calib)), 1) if calib else None, notes=notes, extra=extra)


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def row_key(row: dict[str, Any]) -> tuple:
    """What makes two result rows the same measurement."""
    return tuple(row.get(k) for k in ("model", "dataset", "degradation", "frames", "method", "wbits", "abits",
                                       "scope", "notes"))


def write_results(rows: list[Row] | list[dict[str, Any]], name: str, results_dir: Path,
                  table: Callable[[list[dict[str, Any]], str], str] | None = None) -> tuple[Path, Path]:
    """``<name>.json`` (list of rows, strict JSON) and ``<name>.md`` (``table``, default :func:`markdown_table`)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    data = [r if isinstance(r, dict) else r.to_dict() for r in rows]
    json_path = results_dir / f"{name}.json"
    _write_atomic(json_path, json.dumps(data, indent=1, allow_nan=False) + "\n")
    md_path = results_dir / f"{name}.md"
    _write_atomic(md_path, (table or markdown_table)(data, name) + "\n")
    return json_path, md_path


METHOD_ORDER = ("fp", "minmax", "percentile", "omse", "dbdc", "ema", "minmax+ft", "percentile+ft", "dbdc+ft",
                "qbasicvsr", "quarot", "viditq", "svdquant", "quantvsr")


def display_order(row: dict[str, Any]) -> tuple:
    """Paper order: FP, then each scope (FQ, PQ) from high to low bits, baselines before the methods;
    rows with notes (ablations, variants) after the main ones."""
    method = row["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    notes = str(row.get("notes", ""))
    main = not notes or notes.startswith("from ") or notes == "STCA + LBA"
    return (method != "fp", not main, row["scope"] != "fq", -row["wbits"], notes if not main else "", rank, method)


def _pm(row: dict[str, Any], key: str, spec: str) -> str:
    """A figure, with ``± std`` when the row is a mean over calibration samples."""
    std = row.get(f"{key}_std")
    return format(row[key], spec) + ("" if std is None else f" ± {format(std, spec)}")


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    """The results as Markdown: one table per frames mode (every frame first), each naming its commits."""
    lines = [f"# {title}", ""]
    for frames in sorted({r["frames"] for r in rows}, key=lambda f: f != "full"):
        lines += _frames_table([r for r in rows if r["frames"] == frames]) + [""]
    return "\n".join(lines).rstrip("\n")


def _frames_table(rows: list[dict[str, Any]]) -> list[str]:
    rows = sorted(rows, key=display_order)
    lines = []
    varied = len({(r["model"], r["dataset"], r["degradation"]) for r in rows}) > 1
    if rows:
        r0 = rows[0]
        what = "models and data below" if varied else f"{r0['model']} on {r0['dataset']} ({r0['degradation'].upper()})"
        commits = sorted({r["commit"] for r in rows})
        made = f"commit {commits[0]}" if len(commits) == 1 else f"commits {', '.join(commits)} (each row's in the JSON)"
        dates = sorted({r["date"] for r in rows})
        when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        lines.append(f"{what}, Y channel, {r0['frames']} frames; {made}, {when}.")
        lines.append("")
    ranks = any("average_rank" in r for r in rows)
    losses = any("calibration_loss" in r for r in rows)
    rss = any(r.get("peak_rss_mb") is not None for r in rows)  # calibration's peak, where the harness measured it
    macs = any("gmacs_effective_per_frame" in r for r in rows)
    head = "| method | W/A | scope | PSNR-Y | SSIM-Y | FAB | size (MB) |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | ---: |"
    if varied:
        head, rule = "| model | data |" + head[1:], "| --- | --- |" + rule[1:]
    if ranks:
        head, rule = head + " avg rank |", rule + " ---: |"
    if macs:
        head, rule = head + " GMAC/frame (FP32-eq.) |", rule + " ---: |"
    if losses:
        head, rule = head + " calib loss |", rule + " ---: |"
    if rss:
        head, rule = head + " calib peak RSS (MB) |", rule + " ---: |"
    lines += [head + " calib (s) | notes |", rule + " ---: | --- |"]
    for r in rows:
        scope = (r["scope"] or "-").upper()
        cells = ([r["model"], f"{r['dataset']} {r['degradation'].upper()}"] if varied else []) + [
                 r["method"], f"{r['wbits']}/{r['abits']}", scope, _pm(r, "psnr_y", ".2f"), _pm(r, "ssim_y", ".4f"),
                 f"{r['fab']:.2f}", f"{r['size_mb']:.2f}"]
        if ranks:
            cells.append(f"{r['average_rank']:.1f}" if "average_rank" in r else "-")
        if macs:
            eff = r.get("gmacs_effective_per_frame")
            cells.append("-" if eff is None else f"{eff:.1f} of {r['gmacs_per_frame']:.1f}")
        if losses:
            cells.append(f"{r['calibration_loss']:.4f}" if "calibration_loss" in r else "-")
        if rss:
            cells.append("-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}")
        calib = "-" if r["calib_s"] is None else f"{r['calib_s']:.0f}" + (" (GPU)" if r.get("device") else "")
        cells += [calib, r["notes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
