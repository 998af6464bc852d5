"""Parameter and operation inventory of a float architecture, by part, submodule and layer type.

Operations follow QuantVSR's Table 2: multiply-accumulates of every Conv1d/2d/3d and Linear call,
plus one addition per output element of every bias. At MGLD-VSR's 5x4x64x64 latent the UNet comes
to 1,880.9 G against the table's 1,881 G (weight MACs alone give 1,879.8 G and adding only the
conv biases 1,880.1 G: only the full count rounds to the table's figure). The two matmuls of attention (QK^T and
AV, 315 G more) are counted apart, as the table leaves them out. Counts come from forward hooks,
so a model built on the meta device is counted without memory or arithmetic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vsrq.models.attention import DotProductAttention

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Part:
    """A named piece of a model: modules under their state-dict prefixes (``""`` for the root)."""

    name: str
    modules: dict[str, nn.Module]


@dataclass
class PartInventory:
    """Counts of one part; operations are those of the traced forward."""

    name: str
    params: int = 0
    params_by_submodule: dict[str, int] = field(default_factory=dict)
    params_by_type: dict[str, int] = field(default_factory=dict)
    macs_by_type: Counter = field(default_factory=Counter)  # weight MACs of Conv/Linear, by layer type
    bias_adds: int = 0
    attention_qk: int = 0  # MACs of QK^T
    attention_av: int = 0  # MACs of attention x V

    @property
    def ops(self) -> int:
        """Conv/Linear MACs plus bias additions: the QuantVSR Table 2 figure."""
        return sum(self.macs_by_type.values()) + self.bias_adds

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "params_by_submodule": self.params_by_submodule,
            "params_by_type": self.params_by_type,
            "ops": self.ops,
            "macs_by_type": dict(self.macs_by_type),
            "bias_adds": self.bias_adds,
            "attention_macs": {"qk": self.attention_qk, "av": self.attention_av},
        }


@dataclass(frozen=True)
class LayerCost:
    """One Conv/Linear layer as QuantVSR's Table 2 counts it: its weight as an ``m x n`` matrix (outputs by
    inputs times kernel) applied at ``positions`` output positions, and its bias."""

    m: int
    n: int
    positions: int
    bias: int  # bias parameters (0 without one)

    @property
    def macs(self) -> int:
        return self.positions * self.m * self.n

    @property
    def bias_adds(self) -> int:
        return self.positions * self.bias


def _cost(module: nn.Module, out: torch.Tensor) -> LayerCost:
    width = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
    m = module.weight.shape[0]
    bias = 0 if module.bias is None else module.bias.numel()
    return LayerCost(m, module.weight.numel() // m, out.numel() // width, bias)


def layer_costs(root: nn.Module, run: Callable[[], object]) -> dict[str, LayerCost]:
    """Every Conv/Linear layer under ``root`` as the forward ``run`` calls it (a layer called twice counts twice)."""
    costs: dict[str, LayerCost] = {}

    def on_forward(name: str, module: nn.Module, out: torch.Tensor) -> None:
        cost = _cost(module, out)
        seen = costs.get(name)
        costs[name] = cost if seen is None else LayerCost(cost.m, cost.n, seen.positions + cost.positions, cost.bias)

    _run_hooked([(m, lambda mod, _a, out, name=name: on_forward(name, mod, out))
                 for name, m in root.named_modules() if isinstance(m, WEIGHTED)], run)
    return costs


def _run_hooked(hooks: list[tuple[nn.Module, Callable[..., None]]], run: Callable[[], object]) -> None:
    """Run a forward with forward hooks attached (removed afterwards, also on error), without autograd."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()


def _params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_params(part: Part) -> PartInventory:
    inv = PartInventory(part.name)
    by_type: Counter = Counter()
    for prefix, root in part.modules.items():
        children = [(name, child) for name, child in root.named_children() if _params_of(child)]
        own = sum(p.numel() for p in root.parameters(recurse=False))
        if not children or own:  # a leaf such as quant_conv, or parameters held by the root itself
            inv.params_by_submodule[prefix or type(root).__name__] = own
        for name, child in children:
            inv.params_by_submodule[f"{prefix}.{name}" if prefix else name] = _params_of(child)
        for module in root.modules():
            n = sum(p.numel() for p in module.parameters(recurse=False))
            if n:
                by_type[type(module).__name__] += n
        inv.params += _params_of(root)
    inv.params_by_type = dict(by_type.most_common())
    return inv


def take_inventory(parts: Sequence[Part], run: Callable[[], object]) -> list[PartInventory]:
    """Count each part's parameters, and the operations of its layers during ``run`` (a forward).

    ``run`` may call several parts in turn (an encoder then a decoder); every Conv/Linear call and
    every attention product is credited to the part that owns the layer.
    """
    inventories = [_count_params(part) for part in parts]
    owner: dict[int, PartInventory] = {}
    counted: list[nn.Module] = []
    for part, inv in zip(parts, inventories):
        for root in part.modules.values():
            for module in root.modules():
                if isinstance(module, WEIGHTED + (DotProductAttention,)) and id(module) not in owner:
                    owner[id(module)] = inv
                    counted.append(module)

    def on_forward(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inv = owner[id(module)]
        if isinstance(module, DotProductAttention):
            q, k, v = args
            products = q.shape[:-1].numel() * k.shape[-2]  # batch * heads * queries * keys
            inv.attention_qk += products * q.shape[-1]
            inv.attention_av += products * v.shape[-1]
            return
        cost = _cost(module, out)
        inv.macs_by_type[type(module).__name__] += cost.macs
        inv.bias_adds += cost.bias_adds

    _run_hooked([(m, on_forward) for m in counted], run)
    return inventories
