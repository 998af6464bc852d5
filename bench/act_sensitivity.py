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
as well, and residual-stream equalization, a reparameterization with the float model's outputs unchanged
(checked): each trunk's stream is divided channel by channel by ``s``, folded into the convs that write it
(the input conv, whose LeakyReLU commutes with a positive scale, and every block's second conv) and
multiplied back into the convs that read it (every block's first conv, the input slice of the trunk's own
input conv that reads the warped stream, the fusion's slice, or upconv1 in the unidirectional variant).
``s = a^alpha / w^(1-alpha)`` from the stream's per-channel absolute maximum ``a`` on the calibration clips
and the readers' per-input-channel weight maximum ``w`` (SmoothQuant's rule; cross-layer equalization over a residual stream). Nothing is
added at run time, so an equalized model deploys as the plain one does.

    python bench/act_sensitivity.py                     # quick: first 10 frames per clip
    python bench/act_sensitivity.py --only 'w8a4 *'      # the per-group rows
    python bench/act_sensitivity.py --only 'eq*'         # the equalized rows
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, ENDS_A8, RESULTS, TAIL, parse_args, wanted  # noqa: E402
from harness import CHECKPOINTS, Bench  # noqa: E402

from vsrq.config import LayerRule, QuantConfig  # noqa: E402

GROUPS = {
    "stream": ("*_trunk.main.2.*.conv1",),
    "inner": ("*_trunk.main.2.*.conv2",),
    "trunk-in": ("*_trunk.main.0*",),  # with its split parts
    "frame": ("*_trunk.main.0.parts.0",),  # the LR frame's part of the trunk input conv
    "trunk-features": ("*_trunk.main.0.parts.1",),  # the warped features' part
    "tail": TAIL,
}
ALPHAS = (0.25, 0.5)
FRAME_A8 = ENDS_A8[:1]  # the LR frame's parts alone


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
    return rows


def trunks(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, trunk, offset of its features in the fusion's input)."""
    out = [("forward_trunk", model.forward_trunk, model.num_feat)]
    if model.bidirectional:
        out.insert(0, ("backward_trunk", model.backward_trunk, 0))
    return out


def stream_maxima(model: nn.Module, clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per trunk, the per-channel absolute maximum of its residual stream (every block's input) on ``clips``."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            a = args[0].detach().abs().amax(dim=(0, 2, 3))
            maxima[name] = torch.maximum(maxima[name], a) if name in maxima else a
        return record

    handles = [block.register_forward_pre_hook(hook(name)) for name, trunk, _ in trunks(model) for block in trunk.main[2]]
    with torch.no_grad():
        for clip in clips:
            model(clip[None])
    for h in handles:
        h.remove()
    return maxima


def equalize(model: nn.Module, clips: list[torch.Tensor], alpha: float) -> nn.Module:
    """A copy of ``model`` with each trunk's residual stream equalized (module docstring)."""
    model = copy.deepcopy(model)
    maxima, nf = stream_maxima(model, clips), model.num_feat
    with torch.no_grad():
        for name, trunk, offset in trunks(model):
            first, blocks = trunk.main[0], list(trunk.main[2])
            # after the trunk the stream is read by the fusion's slice, or by upconv1 where there is no fusion
            tail = model.fusion.weight[:, offset:offset + nf] if model.bidirectional else model.upconv1.weight
            readers = [first.weight[:, 3:], *(b.conv1.weight for b in blocks), tail]
            w = torch.stack([r.abs().amax(dim=(0, 2, 3)) for r in readers]).amax(0)
            s = maxima[name].clamp_min(1e-5) ** alpha / w.clamp_min(1e-5) ** (1 - alpha)
            s = (s / s.log().mean().exp()).view(-1)  # geometric mean 1: the stream keeps its overall scale
            first.weight[:nf].div_(s.view(-1, 1, 1, 1))
            first.bias.div_(s)
            first.weight[:, 3:].mul_(s.view(1, -1, 1, 1))
            for b in blocks:
                b.conv1.weight.mul_(s.view(1, -1, 1, 1))
                b.conv2.weight.div_(s.view(-1, 1, 1, 1))
                b.conv2.bias.div_(s)
            tail.mul_(s.view(1, -1, 1, 1))
    return model


class EqualizedBench(Bench):
    """The benchmark on an equalized copy of the model: its checkpoints are keyed by alpha too."""

    alpha: float | None = None

    def checkpoint_path(self, config: QuantConfig) -> Path:
        path = super().checkpoint_path(config)
        if self.alpha is None:
            return path
        tag = hashlib.sha256(json.dumps({"path": path.name, "equalize": self.alpha}).encode()).hexdigest()[:8]
        return CHECKPOINTS / f"{path.stem}-eq{tag}{path.suffix}"


def main() -> int:
    args = parse_args(__doc__)
    bench = EqualizedBench("act_sensitivity", "basicvsr-vimeo-bi", "vid4", "bi", not args.full, BENCH_CALIB,
                           device=args.device)
    if args.resume:
        bench.resume(RESULTS)
    float_model = bench.loaded.model
    example = bench.calib.clips[0][None]
    with torch.no_grad():
        reference = float_model(example)  # what every equalized copy must still compute
    models: dict[float | None, nn.Module] = {None: float_model}
    for label, wbits, abits, include, rules, alpha, notes in plan():
        if not wanted(args, label) or bench.has("omse", wbits, abits, "fq", notes):
            continue
        if alpha not in models:  # one equalized copy per alpha, checked once
            models[alpha] = equalize(float_model, bench.calib.clips, alpha)
            with torch.no_grad():
                gap = float((models[alpha](example) - reference).abs().max())
            if gap > 1e-4:
                raise SystemExit(f"alpha {alpha}: equalization changed the float model's output by {gap:.2e}")
        bench.alpha, bench.loaded.model = alpha, models[alpha]
        config = QuantConfig(method="omse", wbits=wbits, abits=abits, scope="fq", calib=BENCH_CALIB,
                             split_concat=True, include=include, rules=rules)
        row, _ = bench.quantized_row(config, "omse", notes)
        print(f"{label}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f}  calib {row.calib_s:.0f} s", flush=True)
        bench.write(RESULTS)
    bench.loaded.model = float_model
    return 0


if __name__ == "__main__":
    sys.exit(main())
