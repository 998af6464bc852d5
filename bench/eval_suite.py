"""Every metric of the evaluation suite on Vid4 (BI x4, every frame) for FP BasicVSR and one quantized model,
in this environment, offline, through one call of the evaluation API (as `vsrq eval --metrics all --report`).

The quantized model is QuantVSR's SVD branch at W4A4 (no LBA: seconds of calibration) on the benchmark
calibration set. Both models run each clip whole (chunk 64 > the longest clip). Metrics whose weights
are not on this machine are listed as unavailable with the file they need. Writes
``bench/results/eval_suite.json`` (one row per model, every metric's dataset mean as extra keys) and the
picture report ``docs/eval_suite_<frames>/`` (index.md, per-frame curves, temporal profiles, crops). The LR
frames, the checkpoint and both predictions are kept in ``bench/cache/eval_suite/``: a rerun only scores.

    python bench/eval_suite.py            # every frame
    python bench/eval_suite.py --quick    # the first 10 frames of each clip
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS  # noqa: E402
from harness import git_commit  # noqa: E402

import vsrq  # noqa: E402
from vsrq import api  # noqa: E402
from vsrq.benchmark import QUICK_FRAMES, Row, today, write_results  # noqa: E402
from vsrq.config import QuantConfig  # noqa: E402
from vsrq.data.datasets import find_dataset  # noqa: E402

NAME = "eval_suite"
CACHE = Path(__file__).resolve().parent / "cache" / NAME
REPORT = Path(__file__).resolve().parents[1] / "docs" / NAME
MODEL = "basicvsr-vimeo-bi"
CONFIG = QuantConfig(method="quantvsr", wbits=4, abits=4, scope="fq", calib=BENCH_CALIB,
                     options={"branch": "svd", "lba": False})
LABELS = {"fp": "FP32", "quantvsr": "QuantVSR W4A4 (SVD branch)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", default="all")
    parser.add_argument("--quick", action="store_true", help="the first 10 frames of each clip")
    args = parser.parse_args()
    gt = find_dataset("vid4")
    if gt is None:
        raise SystemExit("Vid4 ground truth not found (../shared/data/vid4 or $VSRQ_DATA)")
    frames = "quick" if args.quick else "full"
    cache = CACHE / frames
    cache.mkdir(parents=True, exist_ok=True)
    if args.quick:  # ground truth cut to the first QUICK_FRAMES frames of each clip, as links
        cut = cache / "gt"
        for clip in sorted(p for p in gt.iterdir() if p.is_dir()):
            (cut / clip.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(clip.iterdir())[:QUICK_FRAMES]:
                if not (cut / clip.name / f.name).exists():
                    (cut / clip.name / f.name).symlink_to(f.resolve())
        gt = cut
    lr = cache / "lr"
    if not lr.exists():
        api.degrade_path(gt, lr, "bi", 4)
    checkpoint = CACHE / "quantvsr_w4a4.vsrq"
    calib_s = None
    if not checkpoint.exists():
        start = time.perf_counter()
        vsrq.save(vsrq.quantize(MODEL, CONFIG, log=lambda s: None), checkpoint)
        calib_s = time.perf_counter() - start
    preds = {}
    for key, model in (("fp", MODEL), ("quantvsr", checkpoint)):
        out = cache / key
        if not out.exists():
            api.upscale(model, lr, out, chunk=64, overlap=8)
        preds[LABELS[key]] = out
    start = time.perf_counter()
    root = REPORT.parents[1]  # the report names its inputs relative to the repository, as committed

    def shown(path: Path) -> Path:
        return Path(os.path.relpath(path, root)) if Path(path).resolve().is_relative_to(root) else Path(path)

    os.chdir(root)
    preds = {label: shown(path) for label, path in preds.items()}
    reports = api.evaluation_report(preds, shown(gt), REPORT.with_name(f"{NAME}_{frames}"), y=True, metrics=args.metrics,
                                    overwrite=True)
    eval_s = time.perf_counter() - start
    commit, date = git_commit(), today()
    fp_bytes = 4 * sum(p.numel() for p in vsrq.load(MODEL).parameters())  # size: FP32 parameters, the .vsrq file
    rows = []
    for (key, label), report in zip(LABELS.items(), reports.values()):
        fp = key == "fp"
        extra = {k: report.mean(k) for k in report.metrics if k not in ("psnr", "ssim")}
        extra.update(labels={k: report.label(k) for k in report.metrics}, unavailable=report.unavailable,
                     eval_s_all_models=round(eval_s, 1), report=f"docs/{NAME}_{frames}/index.md")
        rows.append(Row(MODEL, "fp" if fp else CONFIG.method, 32 if fp else CONFIG.wbits, 32 if fp else CONFIG.abits,
                        None if fp else CONFIG.scope, "vid4", "bi", frames, round(report.mean("psnr"), 4),
                        round(report.mean("ssim"), 5), 32.0 if fp else float(CONFIG.wbits),
                        round((fp_bytes if fp else checkpoint.stat().st_size) / 1e6, 3),
                        None if fp or calib_s is None else round(calib_s, 1),
                        "" if fp else "SVD branch, no LBA; clips run whole (chunk 64)", commit, date, extra))
        print(f"{label}:\n{report.to_markdown()}\n", flush=True)
    others = [r for r in json.loads((RESULTS / f"{NAME}.json").read_text())] if (RESULTS / f"{NAME}.json").is_file() else []
    write_results([r for r in others if r["frames"] != frames] + [r.to_dict() for r in rows], NAME, RESULTS, table=table)
    print(reports[LABELS["fp"]].availability())
    return 0


def table(rows: list[dict], title: str) -> str:
    labels = {k: v for r in rows for k, v in r["labels"].items()}  # runs of older commits may lack a metric
    keys = list(labels)
    lines = [f"# {title}", "", "Vid4 BI x4, PSNR/SSIM on Y, the rest on RGB; "
             + "; ".join(sorted({f"{r['frames']} frames: commit {r['commit']}, {r['date']}, pictures {r['report']}"
                                 for r in rows})) + ".", "",
             "| frames | model | " + " | ".join(labels[k] for k in keys) + " |",
             "| --- | --- |" + " ---: |" * len(keys)]
    for r in sorted(rows, key=lambda r: (r["frames"], r["method"] != "fp")):
        values = [r["psnr_y"] if k == "psnr" else r["ssim_y"] if k == "ssim" else r.get(k) for k in keys]
        name = "FP32" if r["method"] == "fp" else f"{r['method']} W{r['wbits']}A{r['abits']}"
        lines.append(f"| {r['frames']} | {name} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    lines += ["", "Unavailable here:", ""] + [f"- {k}: {v}" for k, v in rows[0]["unavailable"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
