"""quantize: float model + host + calibration data + config -> a calibrated :class:`QuantizedModel` + manifest."""

from __future__ import annotations

import copy
import datetime
import time
from typing import Any

import torch
from torch import nn

from vsrq.checkpoint import FORMAT_VERSION, layer_manifest, versions
from vsrq.config import QuantConfig
from vsrq.devices import check_device
from vsrq.errors import VsrqError
from vsrq.methods import get_method
from vsrq.methods.base import CalibContext, Log
from vsrq.models.catalog import LoadedModel
from vsrq.models.host import ModelHost
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.split import split_concat_inputs
from vsrq.quant.swap import LayerChoice, plan_layers, summary, swap_layers


def resolve_scope(host: ModelHost, model: nn.Module, config: QuantConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(include, exclude) globs: the config's own, else the host's scope; auxiliary networks stay FP unless asked."""
    scopes = host.scopes(model)
    if not config.include and config.scope not in scopes:
        raise VsrqError(f"the {host.name} host declares no {config.scope!r} scope (it has {', '.join(scopes)}); "
                        "pass include patterns")
    include = config.include or scopes[config.scope]
    exclude = config.exclude + (() if config.quantize_auxiliary else host.auxiliary(model))
    return include, exclude


def quantize_model(
    loaded: LoadedModel,
    config: QuantConfig,
    calib: Any = None,
    log: Log = print,
    show_progress: bool = True,
    device: str = "cpu",
    inplace: bool = False,
) -> QuantizedModel:
    """Swap the selected layers, run the method's calibration, and record everything in a manifest.

    ``calib`` is calibration data in the form the model's host takes (LR clips for a recurrent model,
    captured denoiser inputs for a diffusion model); None: the host's default for ``config.calib``.

    Calibration runs on ``device`` (``cpu``, ``cuda``, ``cuda:N``); the result always comes back on
    the CPU, so checkpoints and exports never depend on where it was calibrated.

    ``inplace`` quantizes ``loaded.model`` itself instead of a copy (half the memory: a full-size UNet on a
    CPU); the float model is gone afterwards, so recipes that train against it refuse.
    """
    dev = check_device(device)
    host = loaded.host
    method = get_method(config.method)(config)
    config = method.config  # with the fields the recipe fixes
    method.check_host(host, loaded.model)  # a fact the recipe needs and the host lacks fails before any work
    base = (loaded.model if inplace else copy.deepcopy(loaded.model)).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    if config.split_concat:
        split_concat_inputs(base, host.concat_inputs(base))
    include, exclude = resolve_scope(host, base, config)
    choices: list[LayerChoice] = plan_layers(base, include, exclude, config.rules, config.wbits, config.abits)
    layers = swap_layers(base, choices, method.layer_specs)
    base.to(dev)
    teacher = None if inplace else loaded.model if dev.type == "cpu" else copy.deepcopy(loaded.model).to(dev)
    log(summary(choices))
    if calib is None:
        calib = host.default_calibration(loaded.model, config.calib, config.seed, log)
    else:  # the host's own calibration fits the model by construction; a caller's is checked before any work
        host.check_calibration(loaded.model, calib)
    torch.manual_seed(config.seed)
    ctx = CalibContext(teacher, base, layers, calib, config, host, log, show_progress, device=dev)
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
        "model": {"name": loaded.name, "family": host.name, "degradation": loaded.degradation,
                  "spec": None if loaded.spec is None else loaded.spec.to_dict()},
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
    return QuantizedModel(base, manifest, host, controller).to("cpu")
