"""Where a calibrated checkpoint loses against FP, by halves and by layer group (issue 24; a diagnosis, not goal rows).

One row of ``bench/reconstruct_vid4.py`` (its cached checkpoint, or a new calibration kept there), scored on Vid4 BI
with parts of it put back to float:

- ``acts float <group>``: that group's activations read in float, everything else as calibrated;
- ``weights float``: every weight back to the float model's, the activations as calibrated;
- ``weights only <group>``: every activation in float and every weight float but the group's, as calibrated.

Groups are BasicVSR's layer kinds (``frame`` and ``features``: each trunk input conv's two parts; ``stream`` and
``inner``: the residual blocks' first and second convs; ``tail``: fusion and the upsampler) and the activation
bit-widths the calibration chose (``a3`` ... ``a8``). ``--bikes`` scores on the three bikes.mp4 windows instead
(unseen footage, with an FP row there), so the groups that lose on footage unlike Vid4 show; ``--calib`` picks a
row calibrated on another set. The rows are marked ``"deployable": false``: they are simulations with float parts,
scored to say where the loss sits.

    python bench/loss_split.py --row tarq-w6a6          # quick: first 10 frames per clip
    python bench/loss_split.py --row tarq-w6a6 --only 'weights*'
    python bench/loss_split.py --row "ablation tarq-w4a4 state-weights" --calib 6x16x64 --bikes   # on bikes.mp4
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from fnmatch import fnmatchcase
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, TAIL, bikes_clips, on_dataset, parse_args, variant, wanted, with_variant  # noqa: E402
from harness import Bench  # noqa: E402
from reconstruct_vid4 import plan, row_config  # noqa: E402
from torch import nn  # noqa: E402

from vsrq.config import QuantConfig  # noqa: E402
from vsrq.quant.layers import QuantLayer  # noqa: E402
from vsrq.quant.qmodel import QuantizedModel  # noqa: E402
from vsrq.quant.split import SplitInputConv  # noqa: E402

GROUPS = {"all": ("*",), "frame": ("*_trunk.main.0.parts.0",), "features": ("*_trunk.main.0.parts.1",),
          "stream": ("*_trunk.main.2.*.conv1",), "inner": ("*_trunk.main.2.*.conv2",), "tail": TAIL}
BITS = (3, 4, 5, 6, 7, 8)


def members(layers: dict[str, QuantLayer], group: str) -> list[str]:
    """The quantized layers of a kind group (globs) or of a bit group (``a6``: activations at 6 bits)."""
    if group in GROUPS:
        return [n for n in layers if any(fnmatchcase(n, g) or fnmatchcase(n, f"{g}.parts.*") for g in GROUPS[group])]
    return [n for n, l in layers.items() if l.input_quantizer is not None and f"a{l.input_quantizer.bits}" == group]


def float_weight(fp: nn.Module, qm: QuantizedModel, name: str) -> nn.Parameter:
    """The float model's weight for a quantized layer; a split conv's part takes its slice of input channels."""
    conv, _, part = name.rpartition(".parts.")
    if not conv:
        return nn.Parameter(fp.get_submodule(name).weight.detach().clone(), requires_grad=False)
    split = qm.base.get_submodule(conv)
    if not isinstance(split, SplitInputConv):
        raise SystemExit(f"{conv} is not a split conv")
    start = sum(split.sizes[:int(part)])
    weight = fp.get_submodule(conv).weight.detach()[:, start:start + split.sizes[int(part)]]
    return nn.Parameter(weight.clone(), requires_grad=False)


def put_back(qm: QuantizedModel, fp: nn.Module, acts: list[str], weights: list[str]) -> None:
    """Activations of ``acts`` read in float; layers in ``weights`` get the float model's weight back."""
    layers = dict(qm.base.named_modules())
    for name in acts:
        layers[name].input_quantizer = None
    for name in weights:
        layer = layers[name]
        layer.weight, layer.weight_quantizer = float_weight(fp, qm, name), None
    for name in {*acts, *weights}:
        layers[name]._cache = None


def selection(kind: str, group: str, layers: dict[str, QuantLayer]) -> tuple[list[str], list[str]]:
    """(layers whose activations go float, layers whose weights go float) of one variant."""
    every = list(layers)
    if kind == "weights float":
        return [], every
    if kind == "acts float":
        return members(layers, group), []
    if kind == "weights only":
        kept = set(members(layers, group))
        return every, [n for n in every if n not in kept]
    return [], []


def main() -> int:
    args = parse_args(__doc__, row="tarq-w6a6", bikes="score on three 10-frame windows of bikes.mp4 instead of Vid4 "
                                                      "(footage calibration never sees; an FP row there too)")
    calib, extra_rules, suffix = variant(args)
    rows = {r.label: r for r in plan()}
    if args.row not in rows:
        raise SystemExit(f"--row: no row {args.row!r} in bench/reconstruct_vid4.py's plan")
    row = rows[args.row]
    if row.scope != "fq":
        raise SystemExit(f"--row: {args.row!r} is a {row.scope} row; the split's groups are FQ layers")
    method, notes = row.method, row.notes
    config = row_config(method, row.bits, row.options, row.rules + extra_rules, calib, args.split_concat,
                        equalize=row.equalize)
    wbits, abits = config.wbits, config.abits
    bench = Bench("loss_split", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, config.calib, device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    if args.bikes and args.full:
        raise SystemExit("--bikes scores three fixed 10-frame windows (quick frames): run it without --full")
    with on_dataset(bench, "bikes", bikes_clips()) if args.bikes else nullcontext():
        if args.bikes and not bench.has("fp", 32, 32, None):
            print(f"fp on bikes: {bench.fp_row().psnr_y:.3f} dB", flush=True)
            bench.write(RESULTS)
        split(args, bench, config, method, wbits, abits, with_variant(notes, suffix), suffix)
    return 0


def split(args: argparse.Namespace, bench: Bench, config: QuantConfig, method: str, wbits: int, abits: int,
          notes: str, suffix: str) -> None:
    """Score every variant of the row's checkpoint on the bench's current clips."""
    groups = list(GROUPS) + [f"a{b}" for b in BITS]
    plan_ = ([("as calibrated", ""), ("weights float", "")] + [("acts float", g) for g in groups]
             + [("weights only", g) for g in groups if g != "all"])  # "weights only all" is "acts float all"
    present: set[str] | None = None  # the groups that have layers, known from the first load
    for kind, group in plan_:
        label = f"{kind} {group}".strip()
        row_notes = with_variant(f"{args.row}; {label}", suffix)
        if not wanted(args, label) or bench.has(method, wbits, abits, "fq", row_notes):
            continue
        if group and present is not None and group not in present:
            continue  # a bit-width the calibration gave no layer
        qm, calib_s = bench.quantize(config)  # a fresh load of the kept checkpoint for every variant
        layers = {n: m for n, m in qm.base.named_modules() if isinstance(m, QuantLayer)}
        if present is None:
            present = {g for g in groups if members(layers, g)}
        if group and group not in present:
            continue
        acts, weights = selection(kind, group, layers)
        put_back(qm, bench.loaded.model, acts, weights)
        row = bench.row(qm, method, wbits, abits, "fq", calib_s, row_notes, deployable=False, variant=label,
                        float_acts=len(acts), float_weights=len(weights), source_notes=notes)
        print(f"{row_notes}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}", flush=True)
        bench.write(RESULTS)


if __name__ == "__main__":
    sys.exit(main())
