"""QuantVSR's layer and recipe applied to the official BasicVSR (Vimeo BIx4), Vid4 BI, W4A4 and W6A6 FQ.

QuantVSR with its Table 1 ablations (no branch, no branch + LBA, SVD branch, SVD branch + LBA,
STCA, STCA + LBA = quantvsr; ours: SVD branches of uniform rank 16 and 24, which bracket STCA's
average rank, of rank 64 where a layer allows it, and uniform ranks 16/24/32 with STCA's
dual-branch refinement, which separate its allocation from its refinement), QuaRot and SVDQuant,
on the same calibration clips as the QBasicVSR benchmark; the QBasicVSR rows of bench/results/qbasicvsr_vid4.json are repeated for reference.
Rows carry the average rank and the MACs per frame with the FP branch counted at 32 bits.

    python bench/quantvsr_basicvsr.py            # quick: first 10 frames per clip
    python bench/quantvsr_basicvsr.py --per-token   # activations per token (pixel) instead of per tensor
    python bench/quantvsr_basicvsr.py --per-token '*_trunk.main.0' 'upconv*' conv_hr conv_last  # only there
    python bench/quantvsr_basicvsr.py --per-token --holdout 3 --only quantvsr-w4   # stages judged on 3 held-out windows
    python bench/quantvsr_basicvsr.py --act-clip   # dynamic ranges scaled by a clip ratio searched per layer
    python bench/quantvsr_basicvsr.py --act-clip 0.15   # ... searched from 1.00 down to 0.15
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, borrow_rows, parse_args, variant, wanted, with_variant  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import QuantConfig  # noqa: E402
from vsrq.methods.quantvsr import QuantVSR  # noqa: E402

ABLATIONS = (  # (notes, options) at W4A4; STCA + LBA is the quantvsr row itself
    ("ablation: no branch", {"branch": "none", "lba": False}),
    ("ablation: no branch + LBA", {"branch": "none"}),
    ("ablation: SVD branch", {"branch": "svd", "lba": False}),
    ("ablation: SVD branch + LBA", {"branch": "svd"}),
    ("ablation: STCA", {"lba": False}),
    # ours: uniform ranks that bracket STCA's average (18.5 here), to judge its allocation at equal cost
    ("ablation: SVD branch rank 16", {"branch": "svd", "lba": False, "fixed_rank": 16}),
    ("ablation: SVD branch rank 24", {"branch": "svd", "lba": False, "fixed_rank": 24}),
    # ours: r_max everywhere the layer allows it (64 in upconv1/upconv2, 32 in the 64-channel convs)
    ("ablation: SVD branch rank 64", {"branch": "svd", "lba": False, "fixed_rank": 64}),
    # ours: the same uniform ranks with STCA's dual-branch refinement, to separate allocation from refinement
    ("ablation: SVD branch + refinement", {"branch": "svd", "lba": False, "refine": True}),
    ("ablation: SVD branch rank 24 + refinement", {"branch": "svd", "lba": False, "fixed_rank": 24, "refine": True}),
    ("ablation: SVD branch rank 16 + refinement", {"branch": "svd", "lba": False, "fixed_rank": 16, "refine": True}),
)


def main() -> int:
    args = parse_args(__doc__, per_token=True, holdout=True)
    calib, rules, suffix = variant(args)
    # QuantVSR's option: one dynamic range per pixel (token) across channels, everywhere or in the named layers
    per_token = None if args.per_token is None else args.per_token or True
    if per_token is not None:
        where = "" if per_token is True else " in " + " ".join(per_token)
        suffix = with_variant(f"per-token activations{where}", suffix)
    if args.act_clip is not False:
        floor = "" if args.act_clip is True else f" to {args.act_clip:g}"
        suffix = with_variant(f"activation clip search{floor}", suffix)
    bench = Bench("quantvsr_basicvsr", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, calib, device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    # FP is ptq_vid4's row (same model and clips): never recomputed.
    if not borrow_rows(bench, "ptq_vid4", lambda r: r["method"] == "fp") and wanted(args, "fp") \
            and not bench.has("fp", 32, 32, None):
        bench.fp_row()
    plan = []
    for bits in (4, 6):
        plan += [(f"quantvsr-w{bits}", "quantvsr", bits, {}, "STCA + LBA")]
        if bits == 4:
            plan += [(f"quantvsr-{n}", "quantvsr", 4, o, n) for n, o in ABLATIONS]
        plan += [(f"quarot-w{bits}", "quarot", bits, {}, ""), (f"svdquant-w{bits}", "svdquant", bits, {}, "")]
    for label, method, bits, options, notes in plan:
        notes = with_variant(notes, suffix)
        o = {**QuantVSR.default_options, **options}
        trains = method == "quantvsr" and (o["lba"] or QuantVSR.refines(o))  # a row with a training stage
        if args.holdout and trains:  # a stage (refinement, LBA) whose loss on K held-out windows rises is undone
            options, notes = {**options, "holdout": args.holdout}, with_variant(notes, f"holdout {args.holdout}")
        if not wanted(args, label) or bench.has(method, bits, bits, "fq", notes):
            continue
        if per_token is not None:
            options = {**options, "per_token": per_token}
        if args.act_clip is not False:
            options = {**options, "act_clip": args.act_clip}
        config = QuantConfig(method=method, wbits=bits, abits=bits, scope="fq", rules=rules, calib=calib, options=options,
                             split_concat=args.split_concat)
        row, qm = bench.quantized_row(config, method, notes)
        row.extra["average_rank"] = qm.manifest["notes"].get("average_rank", 0.0)
        print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  rank {row.extra['average_rank']:.1f}  "
              f"calib {row.calib_s:.0f} s", flush=True)
        bench.write(RESULTS)
    borrow_rows(bench, "qbasicvsr_vid4", lambda r: r["method"] == "qbasicvsr" and r["scope"] == "fq" and not r["notes"])
    bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
