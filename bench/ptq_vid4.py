"""Static PTQ of the official BasicVSR (Vimeo BIx4) on Vid4 BI: FP vs MinMax, Percentile, OMSE, DBDC.

W8A8, W6A6, W4A4 in the paper's two settings, PQ (propagation bodies) and FQ (every conv), with
SPyNet in FP. Compare with QBasicVSR Tables 2 and 7 (Vid4 BI, FQ W4A4: MinMax 26.03, Percentile
25.23, DBDC 26.24; W6A6 within about 0.2 dB of FP).

    python bench/ptq_vid4.py            # quick: first 10 frames per clip
    python bench/ptq_vid4.py --full     # every frame
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS, parse_args, wanted  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import QuantConfig  # noqa: E402

METHODS = ("minmax", "percentile", "omse", "dbdc")
BITS = (8, 6, 4)
SCOPES = ("fq", "pq")


def main() -> int:
    args = parse_args(__doc__)
    bench = Bench("ptq_vid4", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB, device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    if wanted(args, "fp") and not bench.has("fp", 32, 32, None):
        bench.fp_row()
        bench.write(RESULTS)
    for scope in SCOPES:
        for bits in BITS:
            for method in METHODS:
                label = f"{method}-w{bits}a{bits}-{scope}"
                if not wanted(args, label) or bench.has(method, bits, bits, scope):
                    continue
                row, _ = bench.quantized_row(QuantConfig(method=method, wbits=bits, abits=bits, scope=scope, calib=BENCH_CALIB))
                print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  calib {row.calib_s:.0f} s", flush=True)
                bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
