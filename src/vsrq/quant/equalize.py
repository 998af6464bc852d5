"""Cross-layer equalization of channel streams: an exact float reparametrization that evens out per-channel ranges
before per-tensor activation quantization.

A per-tensor activation range is set by the widest channel; on BasicVSR's residual streams the channels' ranges span
about 5x, so at 4 bits the narrow channels get 2 bits' worth of levels. A positive per-channel scale
``s`` moved out of the stream into the convs around it (writers' output channels divided by ``s``, readers' input
columns multiplied) changes nothing in float (the host declares where that holds, :class:`ChannelStream`) and moves
range from the activations into the per-channel-quantized weights, as DFQ (Nagel et al. 2019) does between two
convs and SmoothQuant (Xiao et al. 2023) between activations and weights: ``s_c = a_c^alpha / w_c^(1 - alpha)``
with ``a_c`` the channel's largest magnitude in any reader's input on the calibration data and ``w_c`` the largest
weight any reader applies to it. ``alpha`` 1 equalizes the activations alone, 0 the weights alone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.host import ChannelStream

EPS = 1e-5  # a channel silent on the calibration data (or a zero weight column) keeps a finite scale


def migration_scale(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel scale ``a^alpha / w^(1 - alpha)``: dividing the activations by it and multiplying
    the weights leaves ``alpha`` of each channel's activation range to the weights."""
    return act_absmax.clamp_min(EPS) ** alpha / weight_absmax.clamp_min(EPS) ** (1.0 - alpha)


def _stream_convs(model: nn.Module, stream: ChannelStream) -> tuple[list[nn.Conv2d], list[tuple[nn.Conv2d, int]]]:
    """The stream's writers and (reader, first input channel) as modules of ``model``, checked against its width."""
    modules = dict(model.named_modules())

    def conv(name: str) -> nn.Conv2d:
        found = modules.get(name)
        if type(found) is not nn.Conv2d or found.groups != 1:
            raise VsrqError(f"channel stream layer {name} is not an ungrouped Conv2d in this model "
                            f"(found {type(found).__name__}): equalize before any layer is swapped or split")
        return found

    writers = [conv(name) for name in stream.writers]
    readers = [(conv(name), first) for name, first in stream.readers]
    for name, w in zip(stream.writers, writers):
        if w.out_channels != stream.channels:
            raise VsrqError(f"channel stream writer {name} has {w.out_channels} output channels, "
                            f"not the stream's {stream.channels}")
    for (name, first), (r, _) in zip(stream.readers, readers):
        if first < 0 or first + stream.channels > r.in_channels:
            raise VsrqError(f"channel stream reader {name} has no input channels {first}..{first + stream.channels}")
    return writers, readers


def stream_ranges(model: nn.Module, streams: tuple[ChannelStream, ...], run: Callable[[], None]) -> list[torch.Tensor]:
    """Each stream's per-channel largest magnitude over its readers' inputs while ``run`` drives ``model``."""
    convs = [_stream_convs(model, stream) for stream in streams]
    ranges = [torch.zeros(s.channels, dtype=torch.float64) for s in streams]

    def hook(i: int, first: int, channels: int) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()[:, first:first + channels]
            ranges[i] = torch.maximum(ranges[i], x.abs().amax(dim=(0, 2, 3)).double().cpu())
        return record

    handles = [reader.register_forward_pre_hook(hook(i, first, s.channels))
               for i, (s, (_, readers)) in enumerate(zip(streams, convs)) for reader, first in readers]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return ranges


def equalize_streams(model: nn.Module, streams: tuple[ChannelStream, ...], ranges: list[torch.Tensor],
                     alpha: float) -> list[torch.Tensor]:
    """Rescale every stream of ``model`` in place by ``a^alpha / w^(1 - alpha)`` (geometric mean 1); returns the
    scales. The float function is unchanged up to rounding."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise VsrqError(f"equalization strength alpha must be a number in [0, 1], got {alpha!r}")
    scales = []
    with torch.no_grad():
        for stream, act in zip(streams, ranges):
            writers, readers = _stream_convs(model, stream)
            columns = [r.weight[:, first:first + stream.channels] for r, first in readers]
            weight = torch.stack([c.abs().amax(dim=(0, 2, 3)).double().cpu() for c in columns]).amax(0)
            s = migration_scale(act, weight, alpha)
            s = s / s.log().mean().exp()
            for column in columns:
                column.mul_(s.to(column).view(1, -1, 1, 1))
            for conv in writers:
                conv.weight.div_(s.to(conv.weight).view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.div_(s.to(conv.bias))
            scales.append(s.float())
    return scales
