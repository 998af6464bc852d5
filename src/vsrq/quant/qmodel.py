"""A quantized model: the base network with quantized layers, an optional per-input controller, a manifest."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vsrq.quant.layers import QuantLayer
from vsrq.quant.swap import quant_layers


class InputController(nn.Module):
    """Sets input-dependent quantization state (e.g. FG-VBA's per-video bits) before each forward.

    ``prepare`` returns extra keyword arguments for the base model's forward (e.g. flows it
    already computed), so analysis of the input costs nothing twice.
    """

    def prepare(self, x: torch.Tensor, base: nn.Module) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def state_manifest(self) -> dict[str, Any]:
        return {}


class QuantizedModel(nn.Module):
    """Runs like the base model (same ``forward(x, output_frames=...)``); outputs are a fake-quant simulation.

    ``manifest`` records method, bits, per-layer settings, calibration clips and hash, seed and versions.
    """

    def __init__(self, base: nn.Module, manifest: dict[str, Any], controller: InputController | None = None) -> None:
        super().__init__()
        self.base = base
        self.controller = controller
        self.manifest = manifest

    def forward(self, x: torch.Tensor, output_frames: range | None = None) -> torch.Tensor:
        extra = self.controller.prepare(x, self.base) if self.controller is not None else {}
        return self.base(x, output_frames=output_frames, **extra)

    def layers(self) -> dict[str, QuantLayer]:
        return quant_layers(self.base)
