"""Robustness to the calibration sample (QBasicVSR Table 5): W4A4 FQ on the official BasicVSR (Vimeo BIx4),
Vid4 BI, each recipe calibrated on 5 samples (seeds 0-4 cut different windows of the same clips), the row
giving the mean and the sample standard deviation of Y-PSNR / SSIM.

Recipes: QBasicVSR (its defaults) and QuantVSR's best recipe on BasicVSR (refined SVD branch + activation
clip search, bench/quantvsr_basicvsr.py). Each seed's row is recorded in the results (notes "...; seed k")
as it is measured, so a sweep of hours goes on where it stopped, in this session or a later one; the
summary row ("...; 5 calibration samples") appears when all five exist.

    python bench/calib_seeds.py                  # quick: first 10 frames per clip, seeds 0-4
    python bench/calib_seeds.py --only qbasicvsr --threads 1
    python bench/calib_seeds.py --available      # record what is measured so far, calibrate nothing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS, labelled_rows_parser, apply_threads  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.benchmark import Row  # noqa: E402
from vsrq.config import QuantConfig  # noqa: E402

NAME = "calib_seeds"
CACHE = Path(__file__).resolve().parent / "cache" / NAME
SEEDS = [0, 1, 2, 3, 4]
RECIPES = (  # (label, method, options, notes)
    ("qbasicvsr", "qbasicvsr", {}, ""),
    ("quantvsr-best", "quantvsr", {"branch": "svd", "refine": True, "lba": False, "act_clip": True},
     "SVD branch + refinement + activation clip search"),
)


def seed_notes(notes: str, seed: int) -> str:
    return "; ".join(n for n in (notes, f"seed {seed}") if n)


def cached(label: str, notes: str) -> dict[int, Row]:
    """Rows measured by earlier runs, by seed: the per-seed rows of the results file (kept in git, so a
    sweep spread over sessions goes on), and any a run left in ``bench/cache/`` before writing them."""
    names = set(Row.__dataclass_fields__) - {"extra"}

    def row(d: dict) -> Row:
        return Row(**{k: d[k] for k in names}, extra={k: v for k, v in d.items() if k not in names})

    out = {}
    for path in sorted(CACHE.glob(f"{label}-seed*.json")):
        d = json.loads(path.read_text())
        out[int(d["seed"])] = row(d["row"])
    results = RESULTS / f"{NAME}.json"
    for d in json.loads(results.read_text()) if results.is_file() else []:
        for seed in SEEDS:
            if d["notes"] == seed_notes(notes, seed) and d["frames"] == "quick":
                out.setdefault(seed, row(d))
    return out


def record(bench: Bench, row: Row, notes: str, seed: int) -> None:
    """Keep one seed's row in the results (notes "...; seed k"), replacing an earlier one."""
    tagged = Row(**{**row.__dict__, "notes": seed_notes(notes, seed), "extra": dict(row.extra)})
    bench.rows = [r for r in bench.rows if (r.method, r.notes) != (tagged.method, tagged.notes)] + [tagged]


def main() -> int:
    parser = labelled_rows_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="every frame (default: first 10 of each clip)")
    parser.add_argument("--available", action="store_true",
                        help="record the seeds measured so far (cache and results) and calibrate nothing")
    args = apply_threads(parser.parse_args())
    bench = Bench(NAME, "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB)
    if args.tables or args.resume:
        bench.resume(RESULTS)
    CACHE.mkdir(parents=True, exist_ok=True)
    for label, method, options, notes in RECIPES:
        if args.tables or (args.only and not any(k in label for k in args.only)):
            continue
        done = cached(label, notes)

        def keep(seed: int, row: Row, label: str = label, notes: str = notes) -> None:
            path = CACHE / f"{label}-seed{seed}.json"
            path.write_text(json.dumps({"seed": seed, "row": row.to_dict()}, indent=1) + "\n")
            print(f"{label} seed {seed}: {row.psnr_y:.3f} dB  calib {row.calib_s:.0f} s", flush=True)
            record(bench, row, notes, seed)
            bench.write(RESULTS)

        for seed, row in done.items():
            record(bench, row, notes, seed)
        bench.write(RESULTS)
        if args.available and len(done) < len(SEEDS):
            print(f"{label}: {len(done)} of {len(SEEDS)} seeds measured", flush=True)
            continue
        config = QuantConfig(method=method, wbits=4, abits=4, scope="fq", calib=BENCH_CALIB, options=options)
        summary = "; ".join(n for n in (notes, f"{len(SEEDS)} calibration samples") if n)
        bench.rows = [r for r in bench.rows if (r.method, r.notes) != (method, summary)]
        row = bench.seeded_row(config, SEEDS, method, summary, done=done, on_seed=keep)
        print(f"{label}: {row.psnr_y:.3f} ± {row.extra['psnr_y_std']:.3f} dB", flush=True)
        bench.write(RESULTS)
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
