"""Reproduce the official BasicVSR figures on Vid4: BI with the Vimeo BIx4 weights, BD with the BDx4 weights.

Acceptance (BasicVSR paper, QBasicVSR Table 1): BI 27.24 +/- 0.05 dB / 0.8251 +/- 0.002,
BD 27.96 +/- 0.1 dB / 0.8553 +/- 0.003 (Y channel, no crop, mean of per-clip means).

    python bench/fp_vid4.py            # every frame (default here: the figures are the point)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.benchmark import write_results  # noqa: E402

TARGETS = {"bi": (27.24, 0.8251, 0.05, 0.002), "bd": (27.96, 0.8553, 0.1, 0.003)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first 10 frames per clip instead of all")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (default) or cuda[:N]")
    args = parser.parse_args()
    rows = []
    ok = True
    for deg, model in (("bi", "basicvsr-vimeo-bi"), ("bd", "basicvsr-vimeo-bd")):
        bench = Bench("fp_vid4", model, "vid4", deg, args.quick, device=args.device)
        psnr, ssim, dp, ds = TARGETS[deg]
        row = bench.fp_row()
        hit = abs(row.psnr_y - psnr) <= dp and abs(row.ssim_y - ssim) <= ds
        ok &= hit or args.quick
        row.notes = f"published {psnr:.2f}/{ssim:.4f}; {'within' if hit else 'OUTSIDE'} +/-{dp}/{ds}"
        rows.append(row)
        print(f"{deg.upper()}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f} ({row.notes})", flush=True)
    write_results(rows, "fp_vid4", RESULTS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
