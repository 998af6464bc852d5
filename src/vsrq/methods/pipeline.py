"""quantize: float model + calibration clips + config -> a calibrated :class:`QuantizedModel` with its manifest."""

from __future__ import annotations

import copy
import datetime
import platform
import time
from typing import Any

import numpy as np
import torch

from vsrq.config import QuantConfig
from vsrq.data.clips import CalibrationSet, load_calibration
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext, Log, get_method
from vsrq.models.registry import SCOPES, LoadedModel
from vsrq.quant.layers import QuantLayer
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.split import split_concat_inputs
from vsrq.quant.swap import LayerChoice, plan_layers, summary, swap_layers
from vsrq.devices import check_device

FORMAT_VERSION = 1


def layer_manifest(layer: QuantLayer) -> dict[str, Any]:
    """Per-layer settings as a checkpoint records them."""

    def q(quantizer) -> dict[str, Any] | None:
        if quantizer is None:
            return None
        entry = {"spec": quantizer.spec.to_dict(), "bits": quantizer.layer_bits()}
        if quantizer.clip_ratio is not None:
            entry["clip_ratio"] = round(float(quantizer.clip_ratio), 6)
        return entry

    return {
        "kind": layer.kind,
        "weight": q(layer.weight_quantizer),
        "input": q(layer.input_quantizer),
        "weight_shape": list(layer._weight_shape()),
        "rank": layer.rank,
        "rotation": None if layer.rotation is None else layer.rotation.size,
        "bias_align": layer.bias_align is not None,
        "smooth": layer.smooth is not None,
    }


def versions() -> dict[str, str]:
    import vsrq

    return {"vsrq": vsrq.__version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def resolve_scope(arch: str, config: QuantConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(include, exclude) globs: the config's own, else the model's scope; the flow network stays FP unless asked."""
    scopes = SCOPES.get(arch)
    if scopes is None and not config.include:
        raise VsrqError(f"architecture {arch} has no named scopes; pass include patterns")
    include = config.include or scopes[config.scope]
    exclude = config.exclude + (() if config.quantize_spynet or scopes is None else scopes.get("flow", ()))
    return include, exclude


def quantize_model(
    loaded: LoadedModel,
    config: QuantConfig,
    calib: CalibrationSet | None = None,
    log: Log = print,
    show_progress: bool = True,
    device: str = "cpu",
) -> QuantizedModel:
    """Swap the selected layers, run the method's calibration, and record everything in a manifest.

    Calibration runs on ``device`` (``cpu``, ``cuda``, ``cuda:N``); the result always comes back on
    the CPU, so checkpoints and exports never depend on where it was calibrated.
    """
    dev = check_device(device)
    method = get_method(config.method)(config)
    base = copy.deepcopy(loaded.model).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    if config.split_concat:
        split_concat_inputs(base)
    include, exclude = resolve_scope(loaded.spec.arch, config)
    choices: list[LayerChoice] = plan_layers(base, include, exclude, config.rules, config.wbits, config.abits)
    layers = swap_layers(base, choices, method.layer_specs)
    base.to(dev)
    teacher = loaded.model if dev.type == "cpu" else copy.deepcopy(loaded.model).to(dev)
    log(summary(choices))
    if calib is None:
        calib = load_calibration(config.calib, config.seed)
    torch.manual_seed(config.seed)
    ctx = CalibContext(teacher, base, layers, calib, config, loaded.spec.arch, log, show_progress, device=dev)
    start = time.perf_counter()
    controller = method.calibrate(ctx)
    if dev.type != "cpu":
        torch.cuda.synchronize(dev)  # GPU work is asynchronous: time it to its end
        ctx.notes["calibrated_on"] = torch.cuda.get_device_name(dev)
    seconds = time.perf_counter() - start
    manifest = {
        "format": FORMAT_VERSION,
        "method": config.method,
        "config": config.to_dict(),
        "model": {"name": loaded.name, "spec": loaded.spec.to_dict(), "degradation": loaded.degradation},
        "layers": {name: layer_manifest(layer) for name, layer in layers.items()},
        "skipped": {c.name: c.reason for c in choices if not c.quantize},
        "calibration": {**calib.manifest(), "seconds": round(seconds, 2)},
        "seed": config.seed,
        "notes": ctx.notes,
        "controller": None if controller is None else controller.state_manifest(),
        "simulation": "fake-quant: float tensors on the integer grid; real integer execution via `vsrq export`",
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return QuantizedModel(base, manifest, controller).to("cpu")
