"""The ``.vsrq`` checkpoint format: one safetensors file with packed integer weights and a JSON manifest.

Quantized layers store their weights as integer codes packed at the real bit-width (``*.weight_int``,
uint8 bit stream) with a float32 scale and zero-point per row; activation ranges, biases, low-rank
branches, rotation signs and every unquantized layer are stored as they are. The manifest (method,
bits, per-layer settings, calibration clips and hash, seed, versions) sits in the safetensors
metadata under ``vsrq_manifest``. Loading rebuilds the architecture from the manifest and gives
outputs identical to the model that was saved. Loading imports no calibration code.

Format 2 (since the model-host contract) records the model's family (``model.family``), names the
float-auxiliary rule ``quantize_auxiliary`` (was ``quantize_spynet``) and tags an input controller
with its ``kind``; format 1 files are migrated on load (:func:`migrate_manifest`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from vsrq.config import QuantizerSpec
from vsrq.errors import VsrqError, cause
from vsrq.models.catalog import build_model, host_for
from vsrq.models.host import HOSTS, ModelSpec
from vsrq.models.weights import write_safetensors
from vsrq.quant.controller import controller_from_manifest
from vsrq.quant.layers import SUPPORTED, QuantLayer
from vsrq.quant.packing import pack_codes, packed_nbytes, unpack_codes
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.split import split_concat_inputs
from vsrq.quant.swap import quant_layers
from vsrq.version import __version__

MANIFEST_KEY = "vsrq_manifest"
SUFFIX = ".vsrq"
FORMAT_VERSION = 2


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
    return {"vsrq": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _packed_state(model: QuantizedModel) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, layer in model.layers().items():
        if layer.weight_quantizer is None:
            continue
        prefix = f"base.{name}."
        codes, scale, zp = layer.weight_codes()
        for key in ("weight", "weight_quantizer.lower", "weight_quantizer.upper"):
            state.pop(prefix + key, None)  # the codes, scale and zero-point replace the weight and its clip bounds
        q = layer.weight_quantizer
        state[prefix + "weight_int"] = pack_codes(codes, q.current_bits(), q.spec.symmetric)
        state[prefix + "weight_scale"] = scale.float().contiguous()
        state[prefix + "weight_zero_point"] = zp.to(torch.int16).contiguous()  # integer-valued, at most 8 bits
    return {k: v.clone() for k, v in state.items()}  # safetensors refuses shared storage


def tensor_nbytes(model: QuantizedModel, under: str = "") -> int:
    """Bytes of the tensors :func:`save` writes for ``model`` (of its modules under the module name ``under``, if
    given), from shapes and bit-widths alone: no packing, and a model on the meta device works, so a full-size
    model is sized without its weights. The file adds its JSON header and manifest."""
    total = 0
    quantized = {f"base.{name}.": layer for name, layer in model.layers().items()
                 if layer.weight_quantizer is not None and name.startswith(under)}
    replaced = ("weight", "weight_quantizer.lower", "weight_quantizer.upper", "weight_int", "weight_scale",
                "weight_zero_point")
    for key, value in model.state_dict().items():
        if under and not key.startswith(f"base.{under}"):
            continue
        layer_prefix = next((p for p in quantized if key.startswith(p) and key[len(p):] in replaced), None)
        if layer_prefix is None:
            total += value.numel() * value.element_size()
    for layer in quantized.values():
        q, shape = layer.weight_quantizer, layer._weight_shape()
        count = int(np.prod(shape))
        rows = {"tensor": 1, "channel": shape[q.axis]}.get(q.spec.granularity, count // max(q.spec.group_size or 1, 1))
        total += packed_nbytes(count, q.current_bits()) + rows * (4 + 2)  # codes, fp32 scale and int16 zero-point
    return total


def save(model: QuantizedModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (a failed save leaves no file)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise VsrqError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {**model.manifest, "layers": {name: layer_manifest(layer) for name, layer in model.layers().items()}}
    if model.controller is not None:
        manifest["controller"] = model.controller.state_manifest()
    return write_safetensors(_packed_state(model), path, {MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})


def read_manifest(path: str | Path) -> dict:
    """The manifest of a ``.vsrq`` file, without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise VsrqError(f"{path}: not a vsrq checkpoint ({type(exc).__name__})") from None
    if MANIFEST_KEY not in meta:
        raise VsrqError(f"{path}: a safetensors file without a vsrq manifest")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
        if not isinstance(manifest, dict):
            raise TypeError(f"the manifest is a JSON {type(manifest).__name__}, not an object")
        return migrate_manifest(manifest, path)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise VsrqError(f"{path}: a malformed vsrq manifest ({cause(exc)})") from None


WALL_CLOCK = ("created", "seconds")  # manifest keys that differ between two identical runs


def _without_wall_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_without_wall_clock(v) for v in value]
    return value


def content_hash(path: str | Path) -> str:
    """SHA-256 of what a checkpoint holds: every tensor (name, dtype, shape, bytes, in name order) and the manifest
    without its wall-clock fields (``created`` and every ``seconds``). Two runs of the same job with the same
    input, seed and thread count give the same hash; the file's own bytes differ by their timestamps."""
    manifest = read_manifest(path)
    digest = hashlib.sha256(json.dumps(_without_wall_clock(manifest), sort_keys=True).encode())
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key).contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def migrate_manifest(manifest: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """A manifest in the current format: format 1 is upgraded in memory, later or unknown ones refused."""
    version = manifest.get("format")
    if version == 1:
        manifest = copy.deepcopy(manifest)
        config = manifest["config"]
        config["quantize_auxiliary"] = config.pop("quantize_spynet", False)
        arch = manifest["model"]["spec"]["arch"]
        manifest["model"]["family"] = "mgldvsr" if arch.startswith("mgldvsr") else arch  # the two families of format 1
        if manifest.get("controller"):
            manifest["controller"] = {"kind": "video_bits", **manifest["controller"]}
        manifest["format"] = FORMAT_VERSION
        return manifest
    if version != FORMAT_VERSION:
        raise VsrqError(f"{path}: checkpoint format {version} is not one this vsrq reads ({FORMAT_VERSION}, or 1); "
                        "re-quantize the model with this version (`vsrq quantize`)")
    return manifest


def _rebuild_layer(module: torch.nn.Module, name: str, entry: dict, tensors: dict[str, torch.Tensor]) -> QuantLayer:
    kind = SUPPORTED.get(type(module))
    if kind != entry["kind"]:
        found = type(module).__name__
        raise VsrqError(f"manifest does not match the model: layer {name} is {found}, the manifest says {entry['kind']}")
    wq, aq = entry["weight"], entry["input"]
    layer = QuantLayer(
        module, None if wq is None else QuantizerSpec.from_dict(wq["spec"]), None if aq is None else QuantizerSpec.from_dict(aq["spec"])
    )
    prefix = f"base.{name}."
    if layer.bias is None and prefix + "bias" in tensors:  # bias alignment folded into a layer built without one
        layer.bias = torch.nn.Parameter(torch.zeros_like(tensors[prefix + "bias"]), requires_grad=False)
    for quantizer, info, key in ((layer.weight_quantizer, wq, "weight_quantizer"), (layer.input_quantizer, aq, "input_quantizer")):
        if quantizer is None:
            continue
        quantizer.bits = info["bits"]
        quantizer.observer = None
        if prefix + f"{key}.lower" in tensors:
            quantizer.set_range(tensors[prefix + f"{key}.lower"], tensors[prefix + f"{key}.upper"])
        if prefix + f"{key}.clip_ratio" in tensors:
            quantizer.set_clip_ratio(tensors[prefix + f"{key}.clip_ratio"])
    if entry.get("smooth"):
        layer.smooth = tensors[prefix + "smooth"].clone()
    if entry.get("rotation"):
        layer.add_rotation(seed=0)
    if entry.get("rank"):
        up, down = tensors[prefix + "lowrank_up"], tensors[prefix + "lowrank_down"]
        m, n = layer.weight_matrix().shape
        if tuple(up.shape) != (m, entry["rank"]) or tuple(down.shape) != (entry["rank"], n):
            raise VsrqError(f"manifest does not match the tensors: {name}'s rank-{entry['rank']} branch of a {m}x{n} "
                            f"weight is stored as {tuple(up.shape)} x {tuple(down.shape)}")
        layer.add_lowrank(up, down)
    if entry.get("bias_align"):
        layer.add_bias_alignment()
    if wq is not None:
        shape = tuple(entry["weight_shape"])
        if tuple(module.weight.shape) != shape:
            raise VsrqError(f"manifest does not match the model: {name} weight is {tuple(module.weight.shape)}, manifest {shape}")
        codes = unpack_codes(tensors[prefix + "weight_int"], wq["bits"], wq["spec"]["symmetric"], shape)
        layer.freeze_weight(codes, tensors[prefix + "weight_scale"], tensors[prefix + "weight_zero_point"])
    return layer


def _base_network(manifest: dict[str, Any], model: nn.Module | None, path: Path) -> nn.Module:
    """The float network the checkpoint's layers go into: ``model`` (a copy) if given, else rebuilt from the spec."""
    family = manifest["model"]["family"]
    if family not in HOSTS:
        raise VsrqError(f"{path}: model family {family!r} is not known to this vsrq ({', '.join(sorted(HOSTS))})")
    if model is not None:
        given = host_for(model)
        if given.name != family:
            raise VsrqError(f"{path} holds a {family} model, not one of the {given.name} family it is loaded into")
        return copy.deepcopy(model).eval()
    spec = manifest["model"].get("spec")
    if spec is None:
        raise VsrqError(f"{path}: a {family} model vsrq cannot rebuild by itself; pass the float model (model=...)")
    return build_model(ModelSpec.from_dict(spec)).eval()


def load(path: str | Path, model: nn.Module | None = None) -> QuantizedModel:
    """Rebuild a quantized model from a ``.vsrq`` file, into ``model`` (its architecture, any weights) if given.
    A file whose tensors and manifest disagree (edited, swapped, missing) is one error, never a half-built model."""
    path = Path(path)
    manifest = read_manifest(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        return _rebuild(path, manifest, tensors, model)
    except VsrqError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise VsrqError(f"{path}: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise VsrqError(f"{path}: its tensors do not match its manifest ({cause(exc)})") from None


def _rebuild(path: Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor],
             model: nn.Module | None) -> QuantizedModel:
    base = _base_network(manifest, model, path)
    host = HOSTS[manifest["model"]["family"]]
    if manifest["config"].get("split_concat"):
        split_concat_inputs(base, host.concat_inputs(base))
    modules = dict(base.named_modules())
    for name, entry in manifest["layers"].items():
        if name not in modules:
            raise VsrqError(f"manifest does not match the model: no layer {name} in this {host.name} model")
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, _rebuild_layer(modules[name], name, entry, tensors))
    controller = controller_from_manifest(manifest.get("controller"), base, host)
    qm = QuantizedModel(base, manifest, host, controller)
    state = dict(tensors)
    for name, layer in quant_layers(base).items():
        if layer.weight is None:
            state[f"base.{name}.weight_int"] = layer.weight_int
            if layer.weight_quantizer is not None:  # clip bounds are not stored once the weight is integer codes
                for key, value in layer.weight_quantizer.state_dict().items():
                    state.setdefault(f"base.{name}.weight_quantizer.{key}", value)
    missing, unexpected = qm.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:3])
        raise VsrqError(f"{path}: tensors do not match the manifest's model ({shown})")
    for p in qm.parameters():
        p.requires_grad_(False)
    return qm.eval()
