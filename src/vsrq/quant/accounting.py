"""Size, operations and feature average bit-width (FAB) of a (quantized) model.

Sizes and operations count a b-bit number as b/32 of a float, the convention of QuantVSR's
Table 2 and QBasicVSR's Params column: a W4 weight is an eighth of a parameter. A quantized
layer's MACs count at max(weight bits, activation bits)/32; its full-precision low-rank branch,
biases and every unquantized layer count at 32 bits. FAB is the mean activation bit-width over
quantized layers (QBasicVSR, Table 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vsrq.models.inventory import LayerCost
from vsrq.quant.layers import SUPPORTED, QuantLayer
from vsrq.quant.quantizer import FakeQuantizer


@dataclass(frozen=True)
class Accounting:
    params: float  # million parameters of the float model
    params_effective: float  # million FP32-equivalent parameters (b-bit counted as b/32)
    macs: float  # giga multiply-accumulates for the example input (0 without one)
    macs_effective: float  # giga FP32-equivalent MACs
    fab: float  # mean activation bits over quantized layers (32 when nothing is quantized)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


def _bits(layer: QuantLayer) -> tuple[int, int]:
    wb = layer.weight_quantizer.current_bits() if layer.weight_quantizer is not None else 32
    ab = layer.input_quantizer.current_bits() if layer.input_quantizer is not None else 32
    return wb, ab


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(main MACs, low-rank branch MACs) of one call."""
    if isinstance(module, QuantLayer):
        kind, shape, rank = module.kind, module._weight_shape(), module.rank
    else:
        kind, shape, rank = SUPPORTED[type(module)], tuple(module.weight.shape), 0
    if kind == "linear":
        positions = out.numel() // out.shape[-1]
        return positions * shape[0] * shape[1], positions * rank * (shape[0] + shape[1])
    kernel = math.prod(shape[2:])
    if kind == "convtranspose2d":  # each input position scatters C_out/groups x kernel
        return (inp.numel() // inp.shape[1]) * shape[0] * shape[1] * kernel, 0
    positions = out.numel() // out.shape[1]
    return positions * shape[0] * shape[1] * kernel, positions * rank * (shape[1] * kernel + shape[0])


def count(model: nn.Module, example: torch.Tensor | None = None, **forward_kwargs) -> Accounting:
    """Parameters of every layer and, given an example input, MACs of every conv/linear call."""
    params = effective = 0.0
    abits = []
    for module in model.modules():
        if isinstance(module, FakeQuantizer):
            continue  # ranges and scales are metadata, not parameters of the network
        if isinstance(module, QuantLayer):
            n = math.prod(module._weight_shape())
            wb, ab = _bits(module)
            extra = sum(p.numel() for p in (module.bias, module.lowrank_up, module.lowrank_down) if p is not None)
            params += n + (module.bias.numel() if module.bias is not None else 0)
            effective += n * wb / 32 + extra
            if module.input_quantizer is not None:
                abits.append(ab)
        else:
            n = sum(p.numel() for p in module.parameters(recurse=False))
            params += n
            effective += n
    macs = macs_eff = 0.0
    if example is not None:

        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            nonlocal macs, macs_eff
            main, branch = _macs(module, inputs[0], out)
            bits = max(_bits(module)) if isinstance(module, QuantLayer) and module.weight_quantizer is not None else 32
            macs += main + branch
            macs_eff += main * bits / 32 + branch

        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QuantLayer) or type(m) in SUPPORTED]
        try:
            with torch.inference_mode():
                model(example, **forward_kwargs)
        finally:
            for h in hooks:
                h.remove()
    fab = sum(abits) / len(abits) if abits else 32.0
    return Accounting(params / 1e6, effective / 1e6, macs / 1e9, macs_eff / 1e9, fab)


def compressed_cost(costs: dict[str, LayerCost], other_params: int, bits: int, ranks: dict[str, int],
                    keep_float: set[str]) -> tuple[float, float]:
    """QuantVSR Table 2's (M params, G ops) of a model quantized at ``bits`` with a float low-rank branch.

    ``costs`` are every Conv/Linear layer's; a quantized layer's weight and operations (MACs and bias additions)
    count at bits/32; a layer in ``keep_float``, every bias parameter and the ``other_params`` (norms, learned
    blends) count in full; a rank-r branch adds r(m + n) parameters and r * positions * (m + n) MACs. Attention
    matmuls are not counted (the table leaves them out).
    """
    scale = bits / 32
    params, ops = float(other_params), 0.0
    for name, c in costs.items():
        share = 1.0 if name in keep_float else scale
        r = 0 if name in keep_float else ranks.get(name, 0)
        params += c.m * c.n * share + c.bias + r * (c.m + c.n)
        ops += (c.macs + c.bias_adds) * share + r * c.positions * (c.m + c.n)
    return params / 1e6, ops / 1e9
