"""Replace layers in place, selected by module-name globs, and report what was and was not quantized.

Quantization knows nothing of any architecture: it sees module names and types. Which names
form a model's "propagation body" or its flow network is its family host's business (vsrq.models.host).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Callable

from torch import nn

from vsrq.config import FP_BITS, LayerRule, QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.quant.layers import SUPPORTED, QuantLayer

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class LayerChoice:
    """One supported layer and what happens to it."""

    name: str
    kind: str
    quantize: bool
    reason: str  # why skipped, or "" when quantized
    wbits: int | None = None
    abits: int | None = None


def _matches(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatchcase(name, p)), None)


def covers(pattern: str, name: str) -> bool:
    """Whether a per-layer pattern applies to module ``name``: it matches the module or one of its parents,
    so a pattern written for a conv keeps applying to the parts of a split conv."""
    owners = [name] + [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
    return any(fnmatchcase(n, pattern) for n in owners)


def rule_for(name: str, rules: tuple[LayerRule, ...]) -> LayerRule | None:
    """The rule that decides layer ``name``: the first that covers it (later rules never override)."""
    return next((r for r in rules if covers(r.pattern, name)), None)


def plan_layers(
    model: nn.Module,
    include: tuple[str, ...],
    exclude: tuple[str, ...] = (),
    rules: tuple[LayerRule, ...] = (),
    wbits: int = 8,
    abits: int = 8,
) -> list[LayerChoice]:
    """Decide per supported layer: quantized (with bits) or skipped (with a reason).

    Raises when a pattern matches nothing, when an explicitly named layer is of an unsupported
    type, or when nothing at all would be quantized.
    """
    modules = dict(model.named_modules())
    for pattern in include + exclude + tuple(r.pattern for r in rules):
        if not any(fnmatchcase(name, pattern) for name in modules if name):
            raise VsrqError(f"pattern {pattern!r} matches no module of {type(model).__name__}")
    for pattern in include:
        if not set(pattern) & _GLOB_CHARS and pattern in modules and type(modules[pattern]) not in SUPPORTED:
            raise VsrqError(
                f"unsupported layer {pattern} ({type(modules[pattern]).__name__}); supported: "
                + ", ".join(t.__name__ for t in SUPPORTED)
            )
    choices = []
    for name, module in modules.items():
        kind = SUPPORTED.get(type(module))
        if kind is None or not name or isinstance(module, QuantLayer):
            continue
        if _matches(name, exclude):
            choices.append(LayerChoice(name, kind, False, "excluded"))
            continue
        if not _matches(name, include):
            choices.append(LayerChoice(name, kind, False, "outside scope"))
            continue
        rule = rule_for(name, rules)
        if rule is not None and rule.skip:
            choices.append(LayerChoice(name, kind, False, f"rule {rule.pattern}"))
            continue
        wb = rule.wbits if rule is not None and rule.wbits is not None else wbits
        ab = rule.abits if rule is not None and rule.abits is not None else abits
        choices.append(LayerChoice(name, kind, True, "", wb, ab))
    if not any(c.quantize for c in choices):
        raise VsrqError(f"nothing to quantize: include {list(include)} selects no supported layer outside {list(exclude)}")
    return choices


def swap_layers(
    model: nn.Module,
    choices: list[LayerChoice],
    specs: Callable[[LayerChoice], tuple[QuantizerSpec | None, QuantizerSpec | None]],
) -> dict[str, QuantLayer]:
    """Replace every chosen layer by a :class:`QuantLayer` with the specs ``specs(choice)`` returns."""
    swapped = {}
    for choice in choices:
        if not choice.quantize:
            continue
        parent_name, _, child = choice.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bits_for_specs = replace(choice, wbits=8 if choice.wbits == FP_BITS else choice.wbits,
                                 abits=8 if choice.abits == FP_BITS else choice.abits)
        wspec, aspec = specs(bits_for_specs)
        if choice.wbits == FP_BITS:
            wspec = None
        if choice.abits == FP_BITS:
            aspec = None
        layer = QuantLayer(getattr(parent, child), wspec, aspec)
        for q in (layer.weight_quantizer, layer.input_quantizer):
            if q is not None:
                q.owner = choice.name
        setattr(parent, child, layer)
        swapped[choice.name] = layer
    return swapped


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """Every :class:`QuantLayer` in a model, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}


def summary(choices: list[LayerChoice]) -> str:
    """A readable account: counts, the quantized layers grouped by bits, and the skipped ones by reason."""
    quantized = [c for c in choices if c.quantize]
    skipped = [c for c in choices if not c.quantize]
    lines = [f"quantized {len(quantized)} layer(s), kept {len(skipped)} in full precision"]
    groups: dict[tuple, list[str]] = {}
    for c in quantized:
        groups.setdefault((c.kind, c.wbits, c.abits), []).append(c.name)
    for (kind, wb, ab), names in groups.items():
        label = f"W{wb if wb != FP_BITS else 'fp'}A{ab if ab != FP_BITS else 'fp'}"
        lines.append(f"  {label:6s} {kind:15s} {len(names):4d}  e.g. {names[0]}")
    reasons: dict[str, list[str]] = {}
    for c in skipped:
        reasons.setdefault(c.reason, []).append(c.name)
    for reason, names in reasons.items():
        lines.append(f"  FP   {reason:15s} {len(names):4d}  e.g. {names[0]}")
    return "\n".join(lines)
