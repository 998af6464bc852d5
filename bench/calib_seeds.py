"""Robustness to the calibration sample (QBasicVSR Table 5): W4A4 FQ on the official BasicVSR (Vimeo BIx4),
Vid4 BI, each recipe calibrated on 5 samples (seeds 0-4 cut different windows of the same clips), the row
giving the mean and the sample standard deviation of Y-PSNR / SSIM.

Recipes: QBasicVSR (its defaults), QuantVSR's best recipe on BasicVSR (refined SVD branch + activation
clip search, bench/quantvsr_basicvsr.py) and TARQ under the FAB budget 4.0 (bench/reconstruct_vid4.py). Each seed's row is recorded in the results (notes "...; seed k")
as it is measured, so a sweep of hours goes on where it stopped, in this session or a later one; the
summary row ("...; 5 calibration samples") appears when all five exist.

    python bench/calib_seeds.py                  # quick: first 10 frames per clip, seeds 0-4
    python bench/calib_seeds.py --only qbasicvsr --threads 1
    python bench/calib_seeds.py --available      # record what is measured so far, calibrate nothing
    python bench/calib_seeds.py --only tarq --seeds 1 2 --calibrate-only --device cuda   # checkpoints only
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS, apply_threads, labelled_rows_parser  # noqa: E402
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
    ("tarq", "tarq", {"fab_budget": 4.0}, "FAB budget 4.0"),
)


def seed_notes(notes: str, seed: int) -> str:
    return "; ".join(n for n in (notes, f"seed {seed}") if n)


def cache_file(label: str, seed: int, frames: str) -> Path:
    return CACHE / f"{label}-seed{seed}{'-full' if frames == 'full' else ''}.json"


def cached(label: str, notes: str, frames: str) -> dict[int, Row]:
    """Rows measured by earlier runs, by seed: the per-seed rows of the results file (kept in git, so a
    sweep spread over sessions goes on), and any a run left in ``bench/cache/`` before writing them."""
    names = set(Row.__dataclass_fields__) - {"extra"}

    def row(d: dict) -> Row:
        return Row(**{k: d[k] for k in names}, extra={k: v for k, v in d.items() if k not in names})

    out = {}
    for seed in SEEDS:
        path = cache_file(label, seed, frames)
        if path.is_file():
            out[seed] = row(json.loads(path.read_text())["row"])
    results = RESULTS / f"{NAME}.json"
    for d in json.loads(results.read_text()) if results.is_file() else []:
        for seed in SEEDS:
            if d["notes"] == seed_notes(notes, seed) and d["frames"] == frames:
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
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS, choices=SEEDS,
                        help="measure only these seeds (several processes share a sweep; the summary row "
                             "appears once all five are measured)")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="calibrate and keep the checkpoints under bench/cache, score nothing")
    parser.add_argument("--device", default="cpu", help="where calibration and scoring run: cpu (default) or cuda[:N]")
    args = apply_threads(parser.parse_args())
    bench = Bench(NAME, "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB, device=args.device)
    if args.tables or args.resume:
        bench.resume(RESULTS)
    CACHE.mkdir(parents=True, exist_ok=True)
    for label, method, options, notes in RECIPES:
        if args.tables or (args.only and not any(k in label for k in args.only)):
            continue
        config = QuantConfig(method=method, wbits=4, abits=4, scope="fq", calib=BENCH_CALIB, options=options)
        if args.calibrate_only:
            for seed in args.seeds:
                bench.use_seed(seed)
                bench.quantize(replace(config, seed=seed))
                print(f"{label} seed {seed}: calibrated", flush=True)
            continue
        done = cached(label, notes, bench.frames)

        def keep(seed: int, row: Row, label: str = label, notes: str = notes) -> None:
            path = cache_file(label, seed, bench.frames)
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
        if set(args.seeds) != set(SEEDS):
            for seed in args.seeds:
                if seed not in done:
                    keep(seed, bench.seed_row(config, seed, method, notes))
            continue
        summary = "; ".join(n for n in (notes, f"{len(SEEDS)} calibration samples") if n)
        bench.rows = [r for r in bench.rows if (r.method, r.notes) != (method, summary)]
        row = bench.seeded_row(config, SEEDS, method, summary, done=done, on_seed=keep)
        print(f"{label}: {row.psnr_y:.3f} ± {row.extra['psnr_y_std']:.3f} dB", flush=True)
        bench.write(RESULTS)
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
