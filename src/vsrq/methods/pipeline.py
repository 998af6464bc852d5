"""quantize: float model + host + calibration data + config -> a calibrated :class:`QuantizedModel` + manifest."""

from __future__ import annotations

import copy
import datetime
import time
from dataclasses import replace
from typing import Any, Iterator

import torch
from torch import nn

from vsrq.checkpoint import FORMAT_VERSION, layer_manifest, tensor_nbytes, versions
from vsrq.config import QuantConfig
from vsrq.data.clips import calibration_for
from vsrq.devices import check_device
from vsrq.errors import VsrqError
from vsrq.memory import trimming_heap
from vsrq.methods import get_method
from vsrq.methods.base import CalibContext, Log, Method
from vsrq.models.catalog import LoadedModel, build_model, host_for
from vsrq.models.host import ModelHost
from vsrq.models.info import info_spec
from vsrq.quant.equalize import equalize_streams, stream_ranges
from vsrq.quant.layers import QuantLayer
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


def swap_model(model: nn.Module, host: ModelHost, config: QuantConfig,
               method: Method) -> tuple[list[LayerChoice], dict[str, QuantLayer]]:
    """Split concatenated inputs if asked, then swap the layers ``config`` selects in ``model`` itself. The
    recipe's own rules for the family join the config's (``method.config`` then holds them all, so the
    manifest rebuilds the same layers)."""
    if config.split_concat:
        split_concat_inputs(model, host.concat_inputs(model))
    added = tuple(r for r in method.host_rules(host, model) if r not in config.rules)
    if added:
        config = method.config = replace(config, rules=config.rules + added)
    include, exclude = resolve_scope(host, model, config)
    choices = plan_layers(model, include, exclude, config.rules, config.wbits, config.abits)
    return choices, swap_layers(model, choices, method.layer_specs)


def skeleton(model: nn.Module, host: ModelHost, config: QuantConfig, ranks: dict[str, int]) -> QuantizedModel:
    """The tensors a checkpoint of ``model`` quantized by ``config`` holds, with no calibration: ``model`` (changed
    in place) with its layers swapped and the structure the method adds, low-rank branches of ``ranks`` included.
    Built on the meta device it sizes a full-size checkpoint (:func:`vsrq.checkpoint.tensor_nbytes`) without a
    weight in memory."""
    method = get_method(config.method)(config)
    _, layers = swap_model(model, host, method.config, method)
    for layer in layers.values():  # a static activation quantizer stores its calibrated range, one value per row
        q = layer.input_quantizer
        if q is not None and not q.spec.dynamic:
            rows = 1 if q.spec.granularity == "tensor" else layer.in_channels
            q.set_range(*torch.zeros(2, rows, device=layer.weight.device))
    return QuantizedModel(model, {}, host, method.add_structure(layers, ranks))


def checkpoint_sizes(name: str, ranks: dict[str, int], bits: tuple[int, ...], under: str,
                     method: str = "quantvsr") -> dict[int, tuple[int, int]]:
    """Per bit-width, (bytes of ``under``'s tensors, bytes of all tensors) in a checkpoint of the registered model
    ``name`` quantized by ``method`` at W``b``A``b`` with branch ``ranks``, built on the meta device: packed codes,
    per-channel scales, branch factors in float32 as checkpoints store them, rotation signs (no dense matrix)."""
    with torch.device("meta"):
        model = build_model(info_spec(name)).eval()
    qm = skeleton(model, host_for(model), QuantConfig(method=method, wbits=max(bits), abits=max(bits)), ranks)
    sizes = {}
    for b in bits:  # one skeleton: only the weights' bit-width changes what is stored
        for layer in qm.layers().values():
            layer.weight_quantizer.bits = b
        sizes[b] = (tensor_nbytes(qm, under), tensor_nbytes(qm))
    return sizes


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def check_finite_calibration(host: ModelHost, calib: Any) -> None:
    """Refuse calibration data holding NaN or inf, naming the item, before any work."""
    for i, name in enumerate(calib.names):
        for call in host.calls(calib, 1, [i], torch.device("cpu")):
            if not all(bool(torch.isfinite(t).all()) for t in _tensors((call.args, call.kwargs)) if t.is_floating_point()):
                raise VsrqError(f"calibration item {name} holds NaN or inf values; no checkpoint written")


def check_finite_layers(layers: dict[str, QuantLayer]) -> None:
    """After calibration, every quantized layer's tensors must be finite: a NaN range, branch or bias (a float
    model that overflows on the calibration data, a diverged step) is named here, never saved."""
    for name, layer in layers.items():
        for key, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise VsrqError(f"calibration gave layer {name} a non-finite {key} (NaN or inf: the float model "
                                "overflows on the calibration data, or training diverged); no checkpoint written")


def equalize_model(host: ModelHost, model: nn.Module, calib: Any, alpha: float) -> dict[str, Any]:
    """Rescale the host's channel streams of the float ``model`` in place from its ranges on ``calib`` (on the
    CPU: one no-grad pass); what the manifest records of it."""
    streams = host.channel_streams(model)

    def run() -> None:
        for call in host.calls(calib, 4, None, torch.device("cpu")):
            host.forward(model, *call.args, **call.kwargs)

    scales = equalize_streams(model, streams, stream_ranges(model, streams, run), alpha)
    return {"alpha": alpha, "streams": len(streams),
            "scales": [round(float(min(s.min() for s in scales)), 4), round(float(max(s.max() for s in scales)), 4)]}


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
    if config.equalize is not None and not host.channel_streams(loaded.model):
        raise VsrqError(f"equalize needs channel streams and the {host.name} host declares none: leave it off")
    base = (loaded.model if inplace else copy.deepcopy(loaded.model)).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    calib_config = config.calib
    if calib is None:  # a BD model's default clips are degraded by BD, and its manifest says so
        calib_config = calibration_for(config.calib, loaded.degradation)
        calib = host.default_calibration(loaded.model, calib_config, config.seed, log)
    else:  # the host's own calibration fits the model by construction; a caller's is checked before any work
        host.check_calibration(loaded.model, calib)
    check_finite_calibration(host, calib)
    notes: dict[str, Any] = {}
    teacher = None if inplace else loaded.model
    if config.equalize is not None:  # the teacher is the equalized float network: feature losses compare streams
        notes["equalize"] = equalize_model(host, base, calib, config.equalize)
        teacher = None if inplace else copy.deepcopy(base)
    choices, layers = swap_model(base, host, config, method)
    config = replace(method.config, calib=calib_config)  # with the recipe's rules for this family
    base.to(dev)
    if teacher is not None and dev.type != "cpu":
        teacher = copy.deepcopy(teacher).to(dev)
    log(summary(choices))
    torch.manual_seed(config.seed)
    ctx = CalibContext(teacher, base, layers, calib, config, host, log, show_progress, notes=notes, device=dev)
    start = time.perf_counter()
    with trimming_heap():  # resident size near the live tensors inside a step (TARQ's rounding: 2.1 GB, not 4.5)
        controller = method.calibrate(ctx)
    check_finite_layers(layers)
    if dev.type != "cpu":
        torch.cuda.synchronize(dev)  # GPU work is asynchronous: time it to its end
        ctx.notes["calibrated_on"] = torch.cuda.get_device_name(dev)
    seconds = time.perf_counter() - start
    manifest = {
        "format": FORMAT_VERSION,
        "method": config.method,
        "config": config.to_dict(),
        "model": {"name": loaded.name, "family": host.name, "degradation": loaded.degradation,
                  "spec": None if loaded.spec is None else loaded.spec.to_dict(),
                  "auxiliary": list(host.auxiliary(base))},
        "layers": {name: layer_manifest(layer) for name, layer in layers.items()},
        "skipped": {c.name: c.reason for c in choices if not c.quantize},
        # float reductions follow the thread count, and fine-tuning carries their last bits on: the same input and
        # seed give the same bytes at the same count only
        "calibration": {**calib.manifest(), "seconds": round(seconds, 2), "threads": torch.get_num_threads()},
        "seed": config.seed,
        "notes": ctx.notes,
        "controller": None if controller is None else controller.state_manifest(),
        "simulation": "fake-quant: float tensors on the integer grid; real integer execution via `vsrq export`",
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return QuantizedModel(base, manifest, host, controller).to("cpu")
