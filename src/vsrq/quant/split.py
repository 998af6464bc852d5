"""Run a convolution over concatenated sources as one convolution per source, summed.

VSR models concatenate tensors of very different ranges before a conv: BasicVSR's propagation
trunk reads ``cat(frame in [0, 1], propagated features)``. One per-tensor activation range over
the concatenation spends its few levels on the features and rounds the frame away (a 4-bit step
of about 1 over a [0, 1] image). ``conv(cat(a, b), W) = conv(a, W_a) + conv(b, W_b)`` exactly, so
splitting the conv by input channels changes nothing in float and gives each source its own
quantized conv with its own activation range: still one integer conv per quantized input, every
weight still at the layer's bit-width, executable by any integer runtime (two convs and an add).

Which convs read concatenations, and of what sizes, is each family's knowledge (its host's
``concat_inputs``); the parts are named ``<conv>.parts.<i>`` and a layer rule written for the conv
applies to its parts.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrq.errors import VsrqError


class SplitInputConv(nn.Module):
    """``conv`` cut along its input channels into ``sizes``; the bias stays on the first part."""

    def __init__(self, conv: nn.Conv2d, sizes: tuple[int, ...]) -> None:
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.groups != 1:
            raise VsrqError(f"only ungrouped Conv2d layers can be split by input, not {type(conv).__name__}")
        if sum(sizes) != conv.in_channels or min(sizes) < 1:
            raise VsrqError(f"input split {sizes} does not add up to the conv's {conv.in_channels} input channels")
        self.sizes = tuple(int(s) for s in sizes)
        parts, start = [], 0
        for i, size in enumerate(self.sizes):
            part = nn.Conv2d(size, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                             bias=i == 0 and conv.bias is not None, padding_mode=conv.padding_mode)
            part.to(device=conv.weight.device, dtype=conv.weight.dtype)
            with torch.no_grad():
                part.weight.copy_(conv.weight[:, start:start + size])
                if part.bias is not None:
                    part.bias.copy_(conv.bias)
            part.weight.requires_grad_(conv.weight.requires_grad)
            if part.bias is not None:
                part.bias.requires_grad_(conv.bias.requires_grad)
            parts.append(part)
            start += size
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, self.sizes, dim=1)
        out = self.parts[0](chunks[0])
        for part, chunk in zip(self.parts[1:], chunks[1:]):
            out = out + part(chunk)
        return out


def split_concat_inputs(model: nn.Module, splits: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Replace, in place, every conv named in ``splits`` by one conv per source of the sizes given; returns ``splits``."""
    if not splits:
        raise VsrqError(f"no convs over concatenations are declared for {type(model).__name__}: nothing to split")
    for name, sizes in splits.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SplitInputConv(getattr(parent, child), sizes))
    return splits
