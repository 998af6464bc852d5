"""Which activation calibration the quick start's W8A8 model takes: FP and the simulated W8A8 static methods on
the demo's own frames (the first 20 of bikes.mp4, BI x4, never used in calibration), calibrated on the demo's
calibration set (8 windows), scored as `vsrq demo` scores (Y, no border crop). Simulation only: the demo's
table gives the integer graph's figure.

    python bench/demo_w8a8.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, labelled_rows_parser, wanted  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import CalibConfig, QuantConfig  # noqa: E402
from vsrq.data.datasets import PairedClip  # noqa: E402
from vsrq.demo import DEMO_CLIP, demo_clip  # noqa: E402

METHODS = ("minmax", "percentile", "omse", "ema")


def main() -> int:
    args = labelled_rows_parser(__doc__).parse_args()
    bench = Bench("demo_w8a8", "basicvsr-vimeo-bi", "bikes-demo", "bi", True, CalibConfig(clips=8))
    if args.resume:
        bench.resume(RESULTS)
    gt, lr = demo_clip(20)
    bench.clips = [PairedClip(f"{DEMO_CLIP}[0:20]", gt, lr)]
    if wanted(args, "fp") and not bench.has("fp", 32, 32, None):
        print(f"fp: {bench.fp_row().psnr_y:.3f} dB", flush=True)
    for method in METHODS:
        if not wanted(args, method) or bench.has(method, 8, 8, "fq", "simulation"):
            continue
        config = QuantConfig(method=method, wbits=8, abits=8, scope="fq", calib=CalibConfig(clips=8))
        row, _ = bench.quantized_row(config, notes="simulation")
        print(f"{method}: {row.psnr_y:.3f} dB  calib {row.calib_s:.0f} s", flush=True)
        bench.write(RESULTS)
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
