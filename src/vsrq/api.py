"""What users import: one function per job, each a thin layer over the modules that do the work.

>>> import vsrq
>>> model = vsrq.load("basicvsr-vimeo-bi")             # or a quantized "model.vsrq"
>>> vsrq.upscale(model, "clip.mp4", "out/")            # PNG frames, streamed in chunks
>>> report = vsrq.evaluate("out/", "gt/", y=True)      # PSNR/SSIM per frame, clip and dataset
>>> vsrq.evaluate("out/", metrics="niqe,ewarp")          # no-reference metrics need no ground truth
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from vsrq import checkpoint
from vsrq.config import CalibConfig, QuantConfig
from vsrq.data.clips import CalibrationSet, load_calibration
from vsrq.data.degrade import degrade, modcrop
from vsrq.data.frames import atomic_output
from vsrq.data.sources import Clip, discover_clips, open_sink
from vsrq.devices import check_device
from vsrq.errors import VsrqError
from vsrq.metrics.report import EvalReport, evaluate_paths
from vsrq.metrics.suite import DEFAULT, parse_metrics
from vsrq.models.catalog import host_for, load_model, loaded_module
from vsrq.models.host import ModelHost
from vsrq.progress import progress, say
from vsrq.quant.qmodel import QuantizedModel
from vsrq.runtime import RUNTIMES, torch_int8
from vsrq.runtime.onnx_export import calibrate_outputs, check_exportable, export_graphs
from vsrq.runtime.ort import OrtFromModel, graph_cache, open_graphs
from vsrq.runtime.upscale import StreamConfig, WindowRunner, upscale_path


def load(name_or_path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """A ready-to-run model: a named/official full-precision model, a weights file or a ``.vsrq`` file
    (rebuilt into ``model``, a float module of its family, when vsrq cannot build the architecture itself)."""
    if str(name_or_path).endswith(checkpoint.SUFFIX):
        return checkpoint.load(name_or_path, model)
    return load_model(str(name_or_path)).model


def quantize(
    model: str | nn.Module,
    config: QuantConfig = QuantConfig(),
    calib: Any = None,
    log: Callable[[str], None] = say,
    show_progress: bool = True,
    device: str = "cpu",
    host: ModelHost | str | None = None,
    inplace: bool = False,
) -> QuantizedModel:
    """Quantize a named model, a weights file or a float ``nn.Module`` with ``config`` (method, bits, scope,
    calibration).

    A module is quantized through its family's host (``host``, else the one registered for its class), so
    every method applies to every family. ``calib`` is calibration data in the host's form (default: the
    clips ``config.calib`` names). Calibration runs on ``device`` (``cpu``, ``cuda[:N]``); the result, on
    the CPU, runs like the float model (a fake-quant simulation) and carries its manifest; :func:`save`
    writes it with packed integer weights. ``inplace`` quantizes the module itself, not a copy (half the
    memory; recipes that train against the float model then refuse).
    """
    from vsrq.methods.pipeline import quantize_model  # calibration code loads only when a job quantizes

    if isinstance(model, nn.Module):
        loaded = loaded_module(model, host)
    else:
        loaded = load_model(str(model))
        if host is not None:
            loaded.host = host_for(loaded.model, host)
    return quantize_model(loaded, config, calib, log, show_progress, device, inplace)


def save(model: QuantizedModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write a quantized model as a ``.vsrq`` checkpoint (packed integer weights + manifest)."""
    return checkpoint.save(model, path, overwrite)


@contextlib.contextmanager
def open_runner(
    model: nn.Module | str | Path,
    runtime: str = "torch",
    chunk: int = 16,
    overlap: int = 8,
    seed: int = 0,
    flow: str = "spynet",
    device: str = "cpu",
    threads: int | None = None,
    float_dtype: str = "auto",
) -> Iterator[tuple[WindowRunner, StreamConfig]]:
    """A model made ready to upscale: the window runner and its window geometry (see :func:`upscale`), for
    callers that upscale many inputs with one load (the batch job's workers); ``threads`` caps
    onnxruntime's threads (torch's are the caller's to set)."""
    if runtime not in RUNTIMES:
        raise VsrqError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    dev = check_device(device)
    if runtime != "torch" and dev.type != "cpu":
        raise VsrqError(f"the {runtime} runtime runs on the CPU; use --device cpu or the torch runtime")
    onnx_file = runtime == "onnxruntime" and isinstance(model, (str, Path)) and str(model).endswith(".onnx")
    net = load(model) if isinstance(model, (str, Path)) and not onnx_file else model
    if isinstance(net, nn.Module) and runtime == "torch-int8":  # a checkpoint file's kernels are built once and kept
        packages = None
        if isinstance(model, (str, Path)) and str(model).endswith(checkpoint.SUFFIX):
            packages = torch_int8.package_folder(Path(model), torch_int8.float_dtype_for(float_dtype), host_for(net))
        net = torch_int8.lower(net, float_dtype=float_dtype, packages=packages)
    if isinstance(net, nn.Module) and runtime != "onnxruntime":
        net = net.to(dev)
        yield host_for(net).stream(net, device, chunk, overlap, seed, flow)
        return
    if isinstance(net, nn.Module):
        check_exportable(net)  # before any output exists: what the integer graphs cannot express
    with tempfile.TemporaryDirectory(prefix="vsrq-ort-") as tmp:
        if onnx_file:
            runner = open_graphs(model, threads)
        else:  # a checkpoint file's graphs are exported once and kept; a module's live for this call
            cached = isinstance(model, (str, Path)) and str(model).endswith(checkpoint.SUFFIX)
            folder = graph_cache(Path(model)) if cached else Path(tmp)
            runner = OrtFromModel(net, lambda: export_ranges(net), folder, getattr(net, "manifest", None), threads)
        yield runner, StreamConfig(chunk, overlap)


def upscale(
    model: nn.Module | str | Path,
    source: str | Path,
    output: str | Path,
    chunk: int = 16,
    overlap: int = 8,
    overwrite: bool = False,
    show_progress: bool = True,
    runtime: str = "torch",
    seed: int = 0,
    flow: str = "spynet",
    device: str = "cpu",
    float_dtype: str = "auto",
) -> list[Clip]:
    """Super-resolve a video, a frame folder or a folder of clips into PNG folders or an .mp4.

    ``runtime="onnxruntime"`` runs integer graphs: ``model`` may be an exported ``.onnx``, or a model
    / ``.vsrq`` that is exported on the fly for each LR size met (a ``.vsrq`` file's graphs are kept in
    ``$VSRQ_CACHE``, default ``~/.cache/vsrq``, so later runs start at once). ``runtime="torch-int8"`` runs a
    quantized model's convs on PyTorch's oneDNN int8 kernels, compiled by Inductor (static or run-time activation
    ranges, rotations and low-rank branches; see :mod:`vsrq.runtime.torch_int8`; a ``.vsrq`` file's kernels are
    compiled ahead of time per LR size and kept in ``$VSRQ_CACHE`` too), what stays float in ``float_dtype``
    (``auto``: bf16 where the CPU runs it natively, ``float32``, ``bfloat16``). Diffusion models (MGLD-VSR) run
    in chunks of their own frame count, ``chunk`` and ``overlap`` aside, each chunk sampled with ``seed``,
    their temporal guidance aligned by the ``flow`` estimator (``spynet`` or ``raft``). ``device``
    (``cpu``, ``cuda``) is where the torch runtime computes; frames stream through host memory.
    """
    with open_runner(model, runtime, chunk, overlap, seed, flow, device, float_dtype=float_dtype) as (runner, stream):
        return upscale_path(runner, Path(source), Path(output), stream, overwrite, show_progress)


def export_ranges(model: nn.Module, calib: CalibrationSet | None = None) -> dict[str, tuple[float, float]] | None:
    """Output ranges an integer graph needs, measured on the checkpoint's own calibration clips.

    The clips are cut again from the manifest's calibration config and seed; their SHA-256 must
    match the manifest's (pass ``calib`` to use other clips).
    """
    if not isinstance(model, QuantizedModel):
        return None
    if calib is None:
        m = model.manifest
        calib = load_calibration(CalibConfig.from_dict(m["config"]["calib"]), m["seed"])
        if calib.sha256 != m["calibration"]["sha256"]:
            raise VsrqError("the calibration clips cut now differ from the checkpoint's (sha256 mismatch); "
                            "pass the calibration clips explicitly (--calib)")
    return calibrate_outputs(model, calib.clips)


def export(model: nn.Module | str | Path, path: str | Path, lr_size: tuple[int, int] = (180, 320),
           calib: CalibrationSet | None = None, weights: str = "auto") -> list[Path]:
    """Write ONNX step graphs (8-bit QDQ for a quantized model) for LR frames of ``lr_size`` (h, w);
    ``weights``: the weight storage (``auto`` fits this CPU, see :func:`~vsrq.runtime.onnx_export.weight_storage`)."""
    net = load(model) if isinstance(model, (str, Path)) else model
    return export_graphs(net, path, lr_size, export_ranges(net, calib), getattr(net, "manifest", None), weights)


def evaluate(pred: str | Path, gt: str | Path | None = None, y: bool = False, crop: int = 0,
             show_progress: bool = True, temporal: bool = False, metrics: str | list[str] | None = None) -> EvalReport:
    """Scores of a prediction tree, against ground truth of the same layout when ``gt`` is given.

    ``metrics``: names or a comma-separated string (``psnr,ssim,lpips,dists,niqe,ewarp``; default PSNR and
    SSIM; ``vsrq eval --help`` lists them); ``temporal`` adds tOF and E_warp against GT flow. Metrics whose
    weights are not on this machine are listed in ``report.unavailable``, never downloaded.
    """
    names = parse_metrics(metrics) if isinstance(metrics, str) else list(metrics or DEFAULT)
    if temporal:
        names += [n for n in ("tof", "ewarp_gt") if n not in names]
    return evaluate_paths(Path(pred), None if gt is None else Path(gt), y=y, crop=crop, show_progress=show_progress,
                          metrics=names)


def evaluation_report(preds: dict[str, str | Path], gt: str | Path | None, output: str | Path, y: bool = False,
                      crop: int = 0, metrics: str | list[str] | None = None, overwrite: bool = False,
                      show_progress: bool = True) -> dict[str, EvalReport]:
    """Score several predictions (label -> tree) the same way and write a folder of PNG pictures (per-frame
    curves on one axis, temporal profiles and crops side by side) with an ``index.md`` that embeds them."""
    from vsrq.metrics.plot import write_report

    if Path(output).exists() and not overwrite:
        raise VsrqError(f"{output} exists; pass --overwrite to replace it")
    reports = {label: evaluate(path, gt, y, crop, show_progress, metrics=metrics) for label, path in preds.items()}
    write_report(reports, {k: Path(v) for k, v in preds.items()}, None if gt is None else Path(gt), Path(output),
                 overwrite)
    return reports


def degrade_path(
    source: str | Path,
    output: str | Path,
    mode: str = "bi",
    scale: int = 4,
    crop_to_multiple: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> list[Clip]:
    """Make LR frames from GT frames with the BI or BD degradation, mirroring the input layout."""
    clips = discover_clips(Path(source))
    with atomic_output(Path(output), overwrite) as tmp:
        for clip in clips:
            sink = open_sink(tmp, clip, len(clips))
            with progress(total=clip.num_frames, desc=clip.name or "degrade", unit="frame", enabled=show_progress) as bar:
                for frame in clip.frames():
                    sink.write(degrade(modcrop(frame, scale) if crop_to_multiple else frame, mode, scale))
                    bar.update(1)
            sink.close()
    return clips
