"""Where 4-bit static activations cost on the official BasicVSR (Vimeo BIx4), Vid4 BI (issue 24).

Every row is OMSE with one conv per concatenated source (split concat), weights per channel, activations
static per tensor. First the two halves of W4A4 (W4A8, W8A4 over every conv), then W8A4 on one group of
layers with the rest of the model in float:

- ``stream``: the residual blocks' first convs, which read the trunks' residual stream;
- ``inner``: the residual blocks' second convs, which read the ReLU output inside a block;
- ``trunk-in``: each trunk's input conv (frame + warped features), and its two parts alone (``frame``,
  ``trunk-features``);
- ``tail``: fusion and the upsampler (upconv1, upconv2, conv_hr, conv_last).

Then W4A4 with the frame parts read at 8 bits (image CNN quantization keeps its first layer at 8 bits), the
same with the tail at 8 bits too (first and last layers), the same with those layers' weights at 8 bits
as well, and residual-stream equalization (``QuantConfig.equalize``, :mod:`vsrq.quant.equalize`), a
reparameterization with the float model's outputs unchanged: each trunk's stream is divided channel by channel by
``s = a^alpha / w^(1-alpha)``, folded into the convs that write it and multiplied back into those that read it.
Nothing is added at run time, so an equalized model deploys as the plain one does.

    python bench/act_sensitivity.py                     # quick: first 10 frames per clip
    python bench/act_sensitivity.py --only 'w8a4 *'      # the per-group rows
    python bench/act_sensitivity.py --only 'eq*'         # the equalized rows
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, ENDS_A8, RESULTS, TAIL, parse_args, wanted  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq.config import LayerRule, QuantConfig  # noqa: E402

GROUPS = {
    "stream": ("*_trunk.main.2.*.conv1",),
    "inner": ("*_trunk.main.2.*.conv2",),
    "trunk-in": ("*_trunk.main.0*",),  # with its split parts
    "frame": ("*_trunk.main.0.parts.0",),  # the LR frame's part of the trunk input conv
    "trunk-features": ("*_trunk.main.0.parts.1",),  # the warped features' part
    "tail": TAIL,
}
ALPHAS = (0.25, 0.5, 0.75, 1.0)
FRAME_A8 = ENDS_A8[:1]  # the LR frame's parts alone
STATE_W8 = LayerRule("*_trunk.main.0.parts.1", wbits=8)  # the warped features' parts


def plan() -> list[tuple[str, int, int, tuple[str, ...], tuple[LayerRule, ...], float | None, str]]:
    """(label, wbits, abits, include globs (empty: every conv), layer rules, equalization alpha, notes)."""
    rows = [(f"w{w}a{a}", w, a, (), (), None, "split concat") for w, a in ((4, 8), (8, 4), (4, 4))]
    rows += [(f"w8a4 {g}", 8, 4, globs, (), None, f"split concat; A4 on {g} only, rest float")
             for g, globs in GROUPS.items()]
    rows += [(f"eq{a} {name}", w, a_, (), (), a, f"split concat; stream equalized, alpha {a}")
             for a in ALPHAS for name, w, a_ in (("w4a4", 4, 4), ("w8a4", 8, 4), ("w4a8", 4, 8))]
    rows.append(("w4a4 frame-a8", 4, 4, (), FRAME_A8, None, "split concat; frame parts at A8"))
    rows.append(("w4a4 ends-a8", 4, 4, (), ENDS_A8, None, "split concat; frame parts and tail at A8"))
    ends_w8a8 = tuple(LayerRule(r.pattern, wbits=8, abits=8) for r in ENDS_A8)
    rows.append(("w4a4 ends-w8a8", 4, 4, (), ends_w8a8, None, "split concat; frame parts and tail at W8A8"))
    # TARQ's best W4-sized setting without its training: 5-bit weights, the ends at W8A6, the state parts' weights at 8
    ends_w8a6 = tuple(LayerRule(r.pattern, wbits=8, abits=6) for r in ENDS_A8) + (STATE_W8,)
    rows += [(f"{'' if a is None else f'eq{a} '}w5a4 ends-w8a6", 5, 4, (), ends_w8a6, a,
              "split concat; frame parts and tail at W8A6, state parts' weights at 8 bits"
              + ("" if a is None else f"; stream equalized, alpha {a}")) for a in (None, *ALPHAS)]
    return rows


def main() -> int:
    args = parse_args(__doc__)
    bench = Bench("act_sensitivity", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB,
                           device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    for label, wbits, abits, include, rules, alpha, notes in plan():
        if not wanted(args, label) or bench.has("omse", wbits, abits, "fq", notes):
            continue
        config = QuantConfig(method="omse", wbits=wbits, abits=abits, scope="fq", calib=BENCH_CALIB,
                             split_concat=True, include=include, rules=rules, equalize=alpha)
        row, _ = bench.quantized_row(config, "omse", notes)
        print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  calib {row.calib_s:.0f} s", flush=True)
        bench.write(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
