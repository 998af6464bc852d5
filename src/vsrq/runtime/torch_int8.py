"""PyTorch's own int8 execution (``--runtime torch-int8``): oneDNN's integer convolutions through Inductor.

Each quantized conv becomes the pattern PyTorch's x86 int8 path compiles: its input quantized to uint8 codes
on the layer's b-bit grid (``quantize_per_tensor`` with ``quant_max = 2^b - 1``, so a 4-bit activation is
clamped to 0..15 exactly as the simulation does), dequantized, and a conv on the dequantized int8 weight
codes. ``torch.compile`` with freezing rewrites every such dequantize-conv into one ``onednn.qconv_pointwise``
and fuses each quantize with the float ops before it (ReLU, residual add) into one vectorized kernel. The
model's own Python recurrence runs around the compiled modules, so streaming, chunking and FG-VBA's per-video
bits (one compiled variant per bit offset, chosen per window by the checkpoint's controller) work as in the
simulation. Needs a C++ compiler (Inductor builds its kernels; they are cached on disk between runs).
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import nn
from torch._dynamo import config as dynamo_config
from torch._inductor import config as inductor_config

from vsrq.checkpoint import layer_manifest
from vsrq.errors import VsrqError
from vsrq.models.host import ModelCall
from vsrq.quant.controller import controller_from_manifest
from vsrq.quant.qmodel import QuantizedModel
from vsrq.runtime.deployable import layer_integer_problems
from vsrq.runtime.onnx_export import LayerQuant, float_copy, integer_layers, video_bit_offsets

_QD = torch.ops.quantized_decomposed
RECOMPILE_LIMIT = 64


class Int8Conv(nn.Module):
    """One quantized conv as quantize -> dequantize -> conv on int8 weight codes (see the module docstring).

    ``inputs`` maps a video bit offset to the input's (scale, zero-point, largest code); ``offset`` selects
    one (set per window by :class:`Int8Model`). Weights do not depend on the offset."""

    def __init__(self, quant: dict[int, LayerQuant], bias: torch.Tensor | None, geometry: dict) -> None:
        super().__init__()
        base = quant[0]
        self.register_buffer("codes", torch.from_numpy(base.weight_codes.copy()))
        self.register_buffer("scale", torch.from_numpy(base.weight_scale.copy()))
        self.register_buffer("zero_point", torch.zeros(len(base.weight_scale), dtype=torch.int64))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.geometry = dict(geometry)
        self.inputs = {o: (float(q.input_scale), int(q.input_zero_point), 2**q.input_bits - 1) for o, q in quant.items()}
        self.offset = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, zp, hi = self.inputs[self.offset]
        xq = _QD.quantize_per_tensor.default(x, s, zp, 0, hi, torch.uint8)
        xd = _QD.dequantize_per_tensor.default(xq, s, zp, 0, hi, torch.uint8)
        w = _QD.dequantize_per_channel.default(self.codes, self.scale, self.zero_point, 0, -128, 127, torch.int8)
        return F.conv2d(xd, w, self.bias, **self.geometry)


class Int8Model(QuantizedModel):
    """A quantized model whose integer convs are :class:`Int8Conv`; runs like the simulation (same host,
    same controller), on integer kernels once compiled (:meth:`compile`)."""

    def forward(self, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        extra = self.controller.prepare(ModelCall(args, kwargs, 0)) if self.controller is not None else {}
        if self.controller is not None:
            bits = self.controller.last_bits
            offsets = {int(round(float(b))) for b in bits}
            if len(offsets) != 1:
                raise VsrqError("the torch-int8 runtime runs one video bit offset per call: upscale one clip at a time")
            offset = offsets.pop()
            for conv in self.int8_convs():
                conv.offset = offset
        # compilation happens in the first call, and again per frame size and bit offset: every conv compiled on
        # its own shares Int8Conv.forward's code, so the per-code limit of 8 variants is raised with it
        with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self.host.forward(self.base, *args, **kwargs, **extra)

    def int8_convs(self) -> list[Int8Conv]:
        return [m for m in self.base.modules() if isinstance(m, Int8Conv)]

    def compile(self) -> "Int8Model":  # type: ignore[override]
        """Compile every child of the base network that holds weights (Inductor; :meth:`forward` turns freezing on,
        which folds the weights into prepacked oneDNN constants): the integer convs and the float parts beside them
        (BasicVSR's SPyNet, a fifth of the time left in eager mode). The first call of each traces and builds its
        kernels; the model's own loop around them stays Python."""
        for child in self.base.children():
            if next(child.parameters(), None) is not None or next(child.buffers(), None) is not None:
                child.compile()
        return self


def has_compiler() -> bool:
    return bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))


def lower(model: nn.Module, compile: bool = True) -> Int8Model:
    """The torch-int8 model of a quantized model (a copy; ``model`` is untouched).

    Every layer with integer weights and a static per-tensor input range becomes an :class:`Int8Conv`;
    weight-only layers run as float convs on their dequantized weights. One clear error otherwise (dynamic
    activation ranges, rotations and low-rank branches run on ``--runtime onnxruntime``)."""
    if not isinstance(model, QuantizedModel):
        raise VsrqError("the torch-int8 runtime runs quantized models (.vsrq); run float models with --runtime torch")
    if compile and not has_compiler():
        raise VsrqError("the torch-int8 runtime needs a C++ compiler (g++ or clang++, or $CXX) for Inductor's kernels")
    for name, layer in model.layers().items():
        problems = [] if layer.kind == "conv2d" else [layer.kind]
        if layer.rank or layer.rotation is not None or layer.smooth is not None:
            problems.append("rotation, smoothing or a low-rank branch")
        if layer.input_quantizer is not None:
            problems += layer_integer_problems(layer_manifest(layer))
            if layer.input_quantizer.spec.dynamic:
                problems.append("dynamic activation ranges")
        if problems:
            raise VsrqError(f"layer {name} has no torch-int8 path ({', '.join(dict.fromkeys(problems))}); "
                            "use --runtime onnxruntime")
    offsets = video_bit_offsets(model)
    quant = {o: integer_layers(model, o) for o in offsets}
    base = float_copy(model)  # every quantized layer a float conv on its dequantized weight, bias alignment folded
    for name in quant[0]:  # those with an integer input become integer convs; weight-only ones stay float
        conv = base.get_submodule(name)
        geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child,
                Int8Conv({o: quant[o][name] for o in offsets}, conv.bias, geometry))
    base.eval()
    controller = None
    if model.controller is not None:  # rebuilt on the new network: it reads the motion of the same SPyNet
        controller = controller_from_manifest(model.controller.state_manifest(), base, model.host)
    out = Int8Model(base, model.manifest, model.host, controller)
    return out.compile() if compile else out
