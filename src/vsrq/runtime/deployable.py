"""What a checkpoint's manifest says about running it on integer kernels, without loading its tensors.

Two questions, answered per layer from the settings a checkpoint records (:func:`vsrq.checkpoint.layer_manifest`):

- **integer graphs**: can ``vsrq export`` make every quantized layer an integer conv? Needs Conv2d layers,
  symmetric per-channel static weights and per-tensor asymmetric activations (static ranges, or dynamic ones
  computed in the graph); rotations, smoothing and low-rank branches run beside them as float ops.
- **deployable**: is it a plain integer model, the kind int8 runtimes and accelerators run as is? Every conv
  quantized (the family's auxiliary network, SpyNet, may stay float or weight-only, as both papers keep it),
  static activation ranges, and no float work beside the integer convs (no low-rank branch, rotation or smoothing).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any


def layer_integer_problems(entry: dict[str, Any]) -> list[str]:
    """Why one quantized layer has no integer conv in an export; empty when it has one."""
    problems = []
    if entry["kind"] != "conv2d":
        problems.append(entry["kind"])
    weight, act = entry["weight"], entry["input"]
    if weight is None:
        problems.append("activation-only quantization")
    elif not (weight["spec"]["symmetric"] and weight["spec"]["granularity"] == "channel" and not weight["spec"]["dynamic"]):
        problems.append("weights not symmetric per-channel static")
    if act is not None and (act["spec"]["symmetric"] or act["spec"]["granularity"] != "tensor"):
        problems.append(f"activations {act['spec']['granularity']}-wise{' symmetric' if act['spec']['symmetric'] else ''}")
    return problems


def deployability(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{"integer_graphs": bool, "deployable": bool, "why": [reasons it is not deployable]}`` of a checkpoint."""
    auxiliary = manifest["model"].get("auxiliary")  # recorded since 2026-12-03; before, the family's default
    if auxiliary is None:
        from torch import nn

        from vsrq.models.catalog import host_for

        auxiliary = host_for(nn.Module(), manifest["model"]["family"]).auxiliary(nn.Module())
    main = {n: e for n, e in manifest["layers"].items() if not any(fnmatchcase(n, p) for p in auxiliary)}
    why: list[str] = []
    blocked = {name: p for name, entry in manifest["layers"].items() if (p := layer_integer_problems(entry))}
    if blocked:
        name, problems = next(iter(blocked.items()))
        why.append(f"{len(blocked)} layers without an integer conv (e.g. {name}: {', '.join(problems)})")
    float_convs = [n for n in manifest["skipped"] if not any(fnmatchcase(n, p) for p in auxiliary)]
    if float_convs:
        why.append(f"{len(float_convs)} convs kept float (e.g. {float_convs[0]})")
    layers = main.values()
    counts = {
        "without activation quantization": sum(e["input"] is None for e in layers),
        "with dynamic activation ranges": sum(bool(e["input"] and e["input"]["spec"]["dynamic"]) for e in layers),
        "with a float low-rank branch": sum(bool(e["rank"]) for e in layers),
        "with a Hadamard rotation": sum(e["rotation"] is not None for e in layers),
        "with smoothing": sum(bool(e["smooth"]) for e in layers),
    }
    why += [f"{n} layers {what}" for what, n in counts.items() if n]
    return {"integer_graphs": not blocked, "deployable": not why, "why": why}
