"""A quantized model: the base network with quantized layers, its family's host, an optional per-input
controller and a manifest."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vsrq.models.host import ModelCall, ModelHost
from vsrq.quant.controller import InputController
from vsrq.quant.layers import QuantLayer
from vsrq.quant.swap import quant_layers


class QuantizedModel(nn.Module):
    """Runs like the base network's host forward (same arguments); outputs are a fake-quant simulation.

    ``manifest`` records method, bits, per-layer settings, calibration data and hash, seed and versions.
    """

    def __init__(self, base: nn.Module, manifest: dict[str, Any], host: ModelHost,
                 controller: InputController | None = None) -> None:
        super().__init__()
        self.base = base
        self.controller = controller
        self.manifest = manifest
        self.host = host

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        extra = self.controller.prepare(ModelCall(args, kwargs, 0)) if self.controller is not None else {}
        return self.host.forward(self.base, *args, **kwargs, **extra)

    def layers(self) -> dict[str, QuantLayer]:
        return quant_layers(self.base)

    def freeze(self) -> "QuantizedModel":
        """Replace every quantized layer's float weight by its integer codes, as loading a checkpoint does: the
        memory of the deployed model, outputs bit-identical. No calibration can follow."""
        for layer in self.layers().values():
            if layer.weight is not None and layer.weight_quantizer is not None:
                layer.freeze_weight()
        return self
