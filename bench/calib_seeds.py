"""Robustness to the calibration sample (QBasicVSR Table 5): W4A4 FQ on the official BasicVSR (Vimeo BIx4),
Vid4 BI, each recipe calibrated on 5 samples (seeds 0-4 cut different windows of the same clips), the row
giving the mean and the sample standard deviation of Y-PSNR / SSIM.

Recipes: QBasicVSR (its defaults) and QuantVSR's best recipe on BasicVSR (refined SVD branch + activation
clip search, bench/quantvsr_basicvsr.py). Each seed's row is kept in ``bench/cache/calib_seeds/`` as it is
measured, so an interrupted run goes on where it stopped and a rerun only writes the table.

    python bench/calib_seeds.py                  # quick: first 10 frames per clip, seeds 0-4
    python bench/calib_seeds.py --only qbasicvsr --threads 1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS, labelled_rows_parser, apply_threads  # noqa: E402

from vsrq.benchmark import Bench, Row  # noqa: E402
from vsrq.config import QuantConfig  # noqa: E402

NAME = "calib_seeds"
CACHE = Path(__file__).resolve().parent / "cache" / NAME
SEEDS = [0, 1, 2, 3, 4]
RECIPES = (  # (label, method, options, notes)
    ("qbasicvsr", "qbasicvsr", {}, ""),
    ("quantvsr-best", "quantvsr", {"branch": "svd", "refine": True, "lba": False, "act_clip": True},
     "SVD branch + refinement + activation clip search"),
)


def cached(label: str) -> dict[int, Row]:
    """Rows measured by an earlier run, by seed."""
    out = {}
    for path in sorted(CACHE.glob(f"{label}-seed*.json")):
        d = json.loads(path.read_text())
        names = set(Row.__dataclass_fields__) - {"extra"}
        out[int(d["seed"])] = Row(**{k: d["row"][k] for k in names}, extra={k: v for k, v in d["row"].items()
                                                                              if k not in names})
    return out


def main() -> int:
    parser = labelled_rows_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="every frame (default: first 10 of each clip)")
    args = apply_threads(parser.parse_args())
    bench = Bench(NAME, "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB)
    if args.tables or args.resume:
        bench.resume(RESULTS)
    CACHE.mkdir(parents=True, exist_ok=True)
    for label, method, options, notes in RECIPES:
        if args.tables or (args.only and not any(k in label for k in args.only)):
            continue
        notes = "; ".join(n for n in (notes, f"{len(SEEDS)} calibration samples") if n)

        def keep(seed: int, row: Row, label: str = label) -> None:
            path = CACHE / f"{label}-seed{seed}.json"
            path.write_text(json.dumps({"seed": seed, "row": row.to_dict()}, indent=1) + "\n")
            print(f"{label} seed {seed}: {row.psnr_y:.3f} dB  calib {row.calib_s:.0f} s", flush=True)

        config = QuantConfig(method=method, wbits=4, abits=4, scope="fq", calib=BENCH_CALIB, options=options)
        bench.rows = [r for r in bench.rows if (r.method, r.notes) != (method, notes)]
        row = bench.seeded_row(config, SEEDS, method, notes, done=cached(label), on_seed=keep)
        print(f"{label}: {row.psnr_y:.3f} ± {row.extra['psnr_y_std']:.3f} dB", flush=True)
        bench.write(RESULTS)
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
