"""Export a (quantized) BasicVSR to ONNX graphs that onnxruntime executes with integer kernels.

The recurrence is driven from Python with per-time-step graphs (chosen over an unrolled graph,
whose size and memory grow with the number of frames and which fixes the clip length):

- ``<name>.flow.onnx``: (x_ref, x_supp) -> SPyNet flow (integer convs where the checkpoint quantized SPyNet);
- ``<name>.backward.onnx``: (x_t, flow, h_t+1) -> h_t, warp, backward trunk;
- ``<name>.onnx``: (x_t, flow, g_t-1, h_t) -> (g_t, y_t), warp, forward trunk, upsampler.

Flows are an input of the steps so that a runner can look at the whole window's motion first:
QBasicVSR's FG-VBA picks each window's activation bits from it (:func:`video_bit_offsets`). A
model with such per-video bits gets one pair of step graphs per bit offset (``<name>.bits-1.onnx``
...), each with its own constant scales (onnxruntime fuses QDQ into integer kernels only with
constant quantization parameters); the runner computes the window's complexity from the flows and
runs that pair, so the choice costs no second SPyNet pass and no re-export.

The warp (GridSample) stays float, SPyNet too unless the checkpoint quantized it (``quantize_auxiliary``; not
with per-video bits, which are chosen from its flows). Every quantized conv becomes the QDQ pattern
onnxruntime fuses into ``QLinearConv``: ``DequantizeLinear(int8 weights, per-channel scales)``
and ``QuantizeLinear -> DequantizeLinear`` on its input with the calibrated uint8 scale and
zero-point (written in; nothing is recalibrated in the runtime). onnxruntime runs a conv in
integers only when its output is quantized too: where a conv's output feeds a ReLU and then the
next quantized conv, that conv's input quantizer serves (bit-exact with the simulation); elsewhere
(before an Add, a LeakyReLU, a pixel shuffle) an 8-bit output quantizer is added, its range
measured by vsrq on the calibration clips of the checkpoint's manifest. These output roundings and
int32 accumulation are the only differences from the PyTorch simulation.

Rewrites for the HR tail's speed (measured, bench/deploy.py): a pixel shuffle after a quantized conv is
requantized with that conv's output scale, so onnxruntime moves uint8 codes instead of floats and fuses
the LeakyReLU after it into ``QLinearLeakyRelu`` (a permutation commutes with quantization, so only
LeakyReLU's table rounding can differ), and it is written channels-last on DCR-ordered channels
(:func:`_channels_last_shuffle`) rather than as onnxruntime's single-threaded, channels-first
DepthToSpace; a quantized conv with fewer than 16 output channels (``conv_last``) runs padded with
zero channels, sliced off afterwards.

Bit-widths below 8 keep their grids exactly. Weight codes of b bits are exact in int8. A b-bit
activation runs on uint8 with its own scale and zero point, and a ``Clip`` on the uint8 codes
(0..2^b-1) between its ``QuantizeLinear`` and ``DequantizeLinear`` applies the simulation's clamp
(``QuantizeLinear`` alone saturates at 0..255); onnxruntime keeps the integer conv after it. So
per-layer bits (TS-LBA) and per-video bits run on int8 kernels with the simulation's codes; int4
kernels (GPU: TensorRT, CUTLASS) would only make 4-bit data cheaper to move and multiply.

QuantVSR's layer (and QuaRot's, SVDQuant's) keeps its float parts as float ops around the integer conv
(:class:`BranchedConv`): SmoothQuant's scales divide the input (one elementwise op: folding them into the
previous layer would be exact only where no nonlinearity sits between), the randomized Hadamard rotation is a
1x1 conv whose matrix the export builds from the checkpoint's sign vector, and the low-rank branch is two float
convs on the unrotated input, added after the integer conv; LBA is already folded into the bias. Activations
with dynamic per-tensor ranges get their range in the graph (:func:`dynamic_qconv`: ReduceMin/ReduceMax, the
clip ratio, the simulation's scale and zero-point formula) and an explicit ``QLinearConv``, since onnxruntime
fuses QDQ into integer kernels only with constant scales. Such a graph runs its HR tail unstriped: a range is
one per frame in the simulation, and a stripe would find its own.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsrq.atomic import file_sha256, staged_files
from vsrq.checkpoint import layer_manifest
from vsrq.devices import cpu_flags
from vsrq.errors import VsrqError, require
from vsrq.models.animesr import SCALE, AnimeSR, padded_size
from vsrq.models.basicvsr import BasicVSR, tail_stripes
from vsrq.quant.controller import VideoBitController
from vsrq.quant.layers import QuantLayer
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.swap import covers, quant_layers
from vsrq.runtime.deployable import layer_integer_problems

OPSET = 17
IR_VERSION = 9  # onnx >= 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses
MIN_QCONV_CHANNELS = 16


class FlowStep(nn.Module):
    """SPyNet's flow that warps ``x_supp``'s features onto ``x_ref``."""

    def __init__(self, base: BasicVSR) -> None:
        super().__init__()
        self.base = base

    def forward(self, x_ref: torch.Tensor, x_supp: torch.Tensor) -> torch.Tensor:
        return self.base.spynet(x_ref, x_supp)


class BackwardStep(nn.Module):
    def __init__(self, base: BasicVSR) -> None:
        super().__init__()
        self.base = base

    def forward(self, x_t: torch.Tensor, flow: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
        return self.base.propagate(self.base.backward_trunk, x_t, h_next, flow)


class ForwardStep(nn.Module):
    def __init__(self, base: BasicVSR, stripes: int = 1) -> None:
        super().__init__()
        self.base, self.stripes = base, stripes

    def forward(self, x_t, flow, g_prev, h_t=None):  # type: ignore[no-untyped-def]
        g = self.base.propagate(self.base.forward_trunk, x_t, g_prev, flow)
        return g, self.base.reconstruct(x_t, g, h_t, self.stripes)


@dataclasses.dataclass(frozen=True)
class LayerQuant:
    """What the graph needs of one quantized conv."""

    weight_codes: np.ndarray  # int8, (out, in, kh, kw)
    weight_scale: np.ndarray  # float32 per output channel
    input_scale: float | None  # None: dynamic, each input's own [min, max] times clip_ratio
    input_zero_point: int
    input_bits: int = 8  # uint8 codes are clamped to 0..2^bits-1
    clip_ratio: float = 1.0

    @property
    def dynamic(self) -> bool:
        return self.input_scale is None


def check_exportable(model: nn.Module) -> None:
    base = model.base if isinstance(model, QuantizedModel) else model
    if not isinstance(base, (BasicVSR, AnimeSR)):
        raise VsrqError(f"ONNX export supports BasicVSR and AnimeSR, not {type(base).__name__}")
    if video_bit_offsets(model) != (0,) and isinstance(base, AnimeSR):
        raise VsrqError("per-video bits (FG-VBA) on AnimeSR have no integer path yet: its complexity needs "
                        "SpyNet's flows, which AnimeSR's graphs do not compute")
    if video_bit_offsets(model) != (0,) and isinstance(model, QuantizedModel):
        flow_layers = [name for name, layer in quant_layers(base).items() if layer.input_quantizer is not None
                       and any(covers(g, name) for g in model.host.auxiliary(base))]
        if flow_layers:  # the runner needs the flows to pick the bits, so the flow graph cannot depend on them
            raise VsrqError(f"per-video bits (FG-VBA) with a quantized flow network ({flow_layers[0]}, ...) have no "
                            "integer path: quantize without --quantize-auxiliary, or without FG-VBA")
    for name, layer in quant_layers(base).items():
        problems = layer_integer_problems(layer_manifest(layer))
        if problems:
            method = model.manifest.get("method", "this") if isinstance(model, QuantizedModel) else "this"
            raise VsrqError(f"{method} checkpoints have no integer path yet: layer {name} cannot run on integer "
                            f"kernels ({', '.join(problems)}); export supports uniform per-channel weights and "
                            "per-tensor activations (static or dynamic)")


def layer_quant(layer: QuantLayer) -> LayerQuant:
    """The integer conv of a layer at its bits now (a video bit offset, if set, included)."""
    codes, scale, _ = layer.weight_codes()
    aq = layer.input_quantizer
    weights = codes.numpy().astype(np.int8), scale.numpy().astype(np.float32)
    if aq.spec.dynamic:
        ratio = 1.0 if aq.clip_ratio is None else float(aq.clip_ratio)
        return LayerQuant(*weights, None, 0, aq.current_bits(), ratio)
    s, z = aq.scale_and_zero_point()
    return LayerQuant(*weights, float(s), int(z), aq.current_bits())


def video_bit_offsets(model: nn.Module) -> tuple[int, ...]:
    """The activation bit offsets a model can run at: (0,), or FG-VBA's per-video offsets (0 first)."""
    controller = model.controller if isinstance(model, QuantizedModel) else None
    if controller is None:
        return (0,)
    if not isinstance(controller, VideoBitController):
        raise VsrqError(f"the integer graphs have no path for the {controller.kind!r} input controller")
    return (0, -1, 1) if controller.allow_up else (0, -1)


def fixed_video_bits(model: nn.Module, offset: int) -> AbstractContextManager:
    """The model's activations at a video bit offset (its FG-VBA controller's), or nothing to fix."""
    controller = model.controller if isinstance(model, QuantizedModel) else None
    return controller.fixed_offset(offset) if isinstance(controller, VideoBitController) else nullcontext()


def integer_layers(model: nn.Module, offset: int = 0) -> dict[str, LayerQuant]:
    """The integer convs (weights and inputs quantized) of ``model`` at a video bit offset."""
    base = model.base if isinstance(model, QuantizedModel) else model
    with fixed_video_bits(model, offset):
        return {name: layer_quant(layer) for name, layer in quant_layers(base).items()
                if layer.input_quantizer is not None}  # weight-only layers run as float convs


class BranchedConv(nn.Module):
    """A QuantVSR / QuaRot / SVDQuant layer as the float ops its graph starts from: the input divided by the
    smoothing scales, the Hadamard rotation as a 1x1 conv (its matrix built here from the checkpoint's signs),
    the low-bit conv on the dequantized weight (``weight``, which :func:`insert_qdq` makes integer) and the
    low-rank branch on the unrotated input as two float convs, added."""

    def __init__(self, layer: QuantLayer, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.geometry = dict(layer.geometry)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.smooth = None if layer.smooth is None else nn.Parameter(layer.smooth.detach().clone().view(1, -1, 1, 1))
        self.rotation = None if layer.rotation is None else nn.Parameter(
            layer.rotation.matrix().reshape(layer.in_channels, layer.in_channels, 1, 1))
        self.lowrank_down = self.lowrank_up = None
        if layer.rank:
            kernel = tuple(weight.shape[2:])
            self.lowrank_down = nn.Parameter(layer.lowrank_down.detach().reshape(layer.rank, layer.in_channels, *kernel).clone())
            self.lowrank_up = nn.Parameter(layer.lowrank_up.detach().reshape(layer.out_channels, layer.rank, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        y = F.conv2d(x if self.rotation is None else F.conv2d(x, self.rotation), self.weight, self.bias, **self.geometry)
        if self.lowrank_down is not None:
            y = y + F.conv2d(F.conv2d(x, self.lowrank_down, None, **self.geometry), self.lowrank_up)
        return y


def float_copy(model: nn.Module) -> nn.Module:
    """The plain network whose quantized convs hold the dequantized (simulated) weights (with their rotation and
    low-rank branch, if any, and QuantVSR's bias alignment folded in): the graph :func:`insert_qdq` turns integer."""
    base = model.base if isinstance(model, QuantizedModel) else model
    plain = copy.deepcopy(base)
    for name, layer in quant_layers(plain).items():
        with torch.no_grad():
            w = layer.quantized_weight().clone()
            bias = None if layer.bias is None else layer.bias.detach().clone()
            if layer.bias_align is not None:
                bias = layer.bias_align.detach().clone() + (0 if bias is None else bias)
        if layer.rank or layer.rotation is not None or layer.smooth is not None:
            conv: nn.Module = BranchedConv(layer, w, bias)
        else:
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, tuple(w.shape[2:]), **layer.geometry,
                             bias=bias is not None)
            conv.weight.data = w
            if bias is not None:
                conv.bias.data = bias
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, conv)
    return plain.eval()


def calibrate_outputs(model: QuantizedModel, clips: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Min/max of every quantized conv's output on the calibration clips (simulated model): of its low-bit
    conv alone where a low-rank branch is added after it (the graph's integer conv ends before the add)."""
    ranges: dict[str, tuple[float, float]] = {}
    hooks = []
    for name, layer in model.layers().items():
        def hook(m, inputs, out, name=name):
            if m.rank:
                out = out - m.lowrank_branch(m.unsmooth(inputs[0]))
            lo, hi = float(out.min()), float(out.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for clip in clips:
                model(clip[None])
    finally:
        for h in hooks:
            h.remove()
    return ranges


def _trace(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str]):
    onnx = require("onnx", "export", "ONNX export")

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, opset_version=OPSET, dynamo=False, input_names=input_names,
                          output_names=output_names, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _pad_output_channels(lq: LayerQuant) -> tuple[np.ndarray, np.ndarray, int]:
    """Weight codes and scales with zero output channels appended up to MIN_QCONV_CHANNELS.

    onnxruntime's integer conv is about 3x slower with 3 output channels than with 16 (measured
    at 576x720 on this CPU), so BasicVSR's HR conv_last runs padded and the padding is sliced
    off after dequantization; the kept channels are bit-identical.
    """
    pad = max(MIN_QCONV_CHANNELS - len(lq.weight_scale), 0)
    if not pad:
        return lq.weight_codes, lq.weight_scale, 0
    codes = np.concatenate([lq.weight_codes, np.zeros((pad, *lq.weight_codes.shape[1:]), np.int8)])
    return codes, np.concatenate([lq.weight_scale, np.ones(pad, np.float32)]), pad


def _uint8_qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(np.clip(round(-lo / scale), 0, 255))


WEIGHT_TYPES = ("auto", "int8", "uint8")
SAFE_INT8 = 64  # |code| <= 64: u8 x s8 pair sums stay within int16 on every x86 kernel


def has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI), whose int8 dot products accumulate in int32."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def weight_storage(codes: np.ndarray, weights: str = "auto", vnni: bool | None = None) -> str:
    """How a layer's weight codes go into the graph: ``int8`` (onnxruntime's fast u8 x s8 kernels) or ``uint8``
    (codes + 128, zero point 128: u8 x u8 kernels, slower).

    Without VNNI, x86 u8 x s8 kernels add pairs of products in saturating int16 (``vpmaddubsw``), so codes
    beyond +-64 give wrong outputs (measured here on an AVX2 CPU: 78% of a 64-channel conv's outputs off by
    up to 9 steps). ``auto`` keeps ``int8`` where that cannot happen (codes within +-64, i.e. up to 7-bit
    weights, or a VNNI CPU) and stores ``uint8`` otherwise; ``int8`` / ``uint8`` force one for graphs
    meant for another machine.
    """
    if weights not in WEIGHT_TYPES:
        raise VsrqError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}")
    if weights != "auto":
        return weights
    if int(np.abs(codes.astype(np.int16)).max(initial=0)) <= SAFE_INT8:
        return "int8"
    return "int8" if (has_vnni() if vnni is None else vnni) else "uint8"


def dynamic_qconv(node, layer: str, tag: str, lq: LayerQuant, weight: tuple[str, str, str], output: tuple[str, str],
                  const: Callable[[str, np.ndarray], str]) -> list:
    """A conv with a dynamic per-tensor input range as integer ops: the input's [min, max] times the clip ratio,
    widened to hold 0, gives the scale and zero point of its b-bit grid exactly as the simulation computes them;
    the conv is a ``QLinearConv`` (its input scale a tensor of the run, its bias quantized with it) whose uint8
    output ``<tag>.output.q`` has the calibrated ``output`` scale and zero point.

    onnxruntime fuses a QDQ pattern into an integer conv only with constant scales, hence the explicit op."""
    from onnx import TensorProto, helper

    x, qmax = node.input[0], 2**lq.input_bits - 1
    nodes = []

    def op(kind: str, inputs: list[str], suffix: str, **attrs) -> str:  # type: ignore[no-untyped-def]
        name = f"{tag}.input.{suffix}"
        nodes.append(helper.make_node(kind, inputs, [name], name=f"{tag}.input/{suffix}", **attrs))
        return name

    def f32(name: str, value: float) -> str:
        return const(f"{layer}.input.{name}", np.array(value, dtype=np.float32))

    lo, hi = op("ReduceMin", [x], "min", keepdims=0), op("ReduceMax", [x], "max", keepdims=0)
    if lq.clip_ratio != 1.0:
        ratio = f32("clip_ratio", lq.clip_ratio)
        lo, hi = op("Mul", [lo, ratio], "min_clipped"), op("Mul", [hi, ratio], "max_clipped")
    zero = f32("zero", 0.0)
    lo, hi = op("Min", [lo, zero], "lower"), op("Max", [hi, zero], "upper")
    steps = f32("steps", float(qmax))
    scale = op("Max", [op("Div", [op("Sub", [hi, lo], "width"), steps], "step"), f32("eps", 1e-8)], "scale")
    zp = op("Clip", [op("Round", [op("Div", [op("Neg", [lo], "neg_lower"), scale], "zp_float")], "zp_round"),
                     zero, steps], "zp_clamped")
    zp = op("Cast", [zp], "zero_point", to=TensorProto.UINT8)
    codes = op("QuantizeLinear", [x, scale, zp], "q")
    if lq.input_bits < 8:  # QuantizeLinear saturates at 255, the b-bit grid at 2^b-1
        bottom = const(f"{layer}.input.code_min", np.array(0, dtype=np.uint8))
        codes = op("Clip", [codes, bottom, const(f"{layer}.input.code_max", np.array(qmax, dtype=np.uint8))],
                   f"q{lq.input_bits}")
    inputs = [codes, scale, zp, *weight, *output]
    if len(node.input) > 2:  # int32 bias on the grid of input scale x weight scale
        step = op("Mul", [scale, weight[1]], "bias_step")
        inputs.append(op("Cast", [op("Round", [op("Div", [node.input[2], step], "bias_steps")], "bias_round")],
                         "bias_q", to=TensorProto.INT32))
    nodes.append(helper.make_node("QLinearConv", inputs, [f"{tag}.output.q"], name=f"{tag}/QLinearConv",
                                  **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
    return nodes


def insert_qdq(graph_model, quant: dict[str, LayerQuant], out_ranges: dict[str, tuple[float, float]], prefix: str,
               weights: str = "auto"):
    """Rewrite the float graph: quantized convs get 8-bit weights (:func:`weight_storage`), input QDQ and, where
    needed, output QDQ."""
    from onnx import helper, numpy_helper

    g = graph_model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    conv_layer = {}
    for node in g.node:
        if node.op_type == "Conv" and node.input[1].startswith(prefix):
            name = node.input[1][len(prefix):].rsplit(".weight", 1)[0]
            if name in quant:
                conv_layer[node.name] = name

    new_nodes = []
    extra_inits: dict[str, object] = {}

    def const(name: str, value: np.ndarray) -> str:  # a layer's constants are shared by its copies (stripes)
        if name not in extra_inits:
            extra_inits[name] = numpy_helper.from_array(value, name)
        return name

    def qdq(tensor: str, layer: str, tag: str, lq: LayerQuant) -> str:
        s = const(f"{layer}.input.scale", np.array(lq.input_scale, dtype=np.float32))
        z = const(f"{layer}.input.zero_point", np.array(lq.input_zero_point, dtype=np.uint8))
        codes = f"{tag}.input.q"
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [codes], name=f"{tag}.input/Quantize"))
        if lq.input_bits < 8:  # the b-bit grid: QuantizeLinear saturates at 0..255, the simulation at 0..2^b-1
            lo = const(f"{layer}.input.code_min", np.array(0, dtype=np.uint8))
            hi = const(f"{layer}.input.code_max", np.array(2**lq.input_bits - 1, dtype=np.uint8))
            clamped = f"{tag}.input.q{lq.input_bits}"
            new_nodes.append(helper.make_node("Clip", [codes, lo, hi], [clamped], name=f"{tag}.input/ClampCodes"))
            codes = clamped
        new_nodes.append(helper.make_node("DequantizeLinear", [codes, s, z], [f"{tag}.input.dq"],
                                          name=f"{tag}.input/Dequantize"))
        return f"{tag}.input.dq"

    copies: dict[str, int] = {}  # a layer traced more than once (the HR tail's stripes): tensor names get #k
    shuffles: dict[str, tuple[str, str]] = {}  # DepthToSpace node -> its input's output scale, zero-point
    shapes = _static_shapes(graph_model)
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for node in list(g.node):
        layer = conv_layer.get(node.name)
        if layer is None:
            if node.name not in shuffles:
                new_nodes.append(node)
                continue
            s, z = shuffles[node.name]
            chain = _channels_last_shuffle(node, shapes[node.input[0]], const)
            chain[-1].output[0] = f"{node.name}.float"
            new_nodes.extend(chain)
            new_nodes.append(helper.make_node("QuantizeLinear", [f"{node.name}.float", s, z], [f"{node.name}.q"]))
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{node.name}.q", s, z], [node.output[0]]))
            continue
        k = copies[layer] = copies.get(layer, -1) + 1
        tag = layer if k == 0 else f"{layer}#{k}"
        lq = quant[layer]
        users = consumers.get(node.output[0], [])
        shuffles_after = _shuffles_after(users, consumers, values) if len(lq.weight_scale) >= MIN_QCONV_CHANNELS else []
        if shuffles_after:  # output channels in DCR order: the shuffle then moves whole pixels
            blocks = next(helper.get_attribute_value(a) for a in shuffles_after[0].attribute if a.name == "blocksize")
            order = dcr_order(len(lq.weight_scale), blocks)
            lq = dataclasses.replace(lq, weight_codes=lq.weight_codes[order], weight_scale=lq.weight_scale[order])
            if len(node.input) > 2:
                if f"{layer}.bias_dcr" not in extra_inits:
                    const(f"{layer}.bias_dcr", numpy_helper.to_array(inits.pop(node.input[2]))[order])
                node.input[2] = f"{layer}.bias_dcr"
        codes, w_scale, pad = _pad_output_channels(lq)
        w_s = const(f"{layer}.weight_scale", w_scale)
        if weight_storage(codes, weights) == "int8":
            w_q = const(f"{layer}.weight_q", codes)
            w_z = const(f"{layer}.weight_zero_point", np.zeros(len(w_scale), dtype=np.int8))
        else:
            w_q = const(f"{layer}.weight_q", (codes.astype(np.int16) + 128).astype(np.uint8))
            w_z = const(f"{layer}.weight_zero_point", np.full(len(w_scale), 128, dtype=np.uint8))
        inits.pop(prefix + layer + ".weight", None)
        if pad and len(node.input) > 2:
            if f"{layer}.bias_padded" not in extra_inits:
                bias = numpy_helper.to_array(inits.pop(node.input[2]))
                const(f"{layer}.bias_padded", np.concatenate([bias, np.zeros(pad, bias.dtype)]))
            node.input[2] = f"{layer}.bias_padded"
        relu_to_qconv = (not pad and not lq.dynamic and len(users) == 1 and users[0].op_type == "Relu"
                         and all(conv_layer.get(c.name) and not quant[conv_layer[c.name]].dynamic
                                 for c in consumers.get(users[0].output[0], [])))
        out = node.output[0]
        if not lq.dynamic:
            node.input[0] = qdq(node.input[0], layer, tag, lq)
            new_nodes.append(helper.make_node("DequantizeLinear", [w_q, w_s, w_z], [f"{tag}.weight_dq"], axis=0,
                                              name=f"{tag}/DequantizeWeight"))
            node.input[1] = f"{tag}.weight_dq"
            new_nodes.append(node)
            if relu_to_qconv:  # the next conv's input quantizer makes this conv integer
                continue
            node.output[0] = f"{tag}.out_float"
        scale, zp = _uint8_qparams(*out_ranges[layer])
        s = const(f"{layer}.output.scale", np.array(scale, dtype=np.float32))
        z = const(f"{layer}.output.zero_point", np.array(zp, dtype=np.uint8))
        if lq.dynamic:
            new_nodes.extend(dynamic_qconv(node, layer, tag, lq, (w_q, w_s, w_z), (s, z), const))
        else:
            new_nodes.append(helper.make_node("QuantizeLinear", [node.output[0], s, z], [f"{tag}.output.q"]))
        dq_out = f"{tag}.output.padded" if pad else out
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}.output.q", s, z], [dq_out]))
        if pad:
            keep = len(lq.weight_scale)
            new_nodes.append(helper.make_node(
                "Slice", [dq_out, const(f"{layer}.keep.starts", np.array([0])),
                          const(f"{layer}.keep.ends", np.array([keep])), const(f"{layer}.keep.axes", np.array([1]))],
                [out], name=f"{tag}/DropPadding"))
        elif shuffles_after:  # a permutation: requantized alike, it moves the uint8 codes, not floats
            shuffles.update({shuffle.name: (s, z) for shuffle in shuffles_after})
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(list(inits.values()) + list(extra_inits.values()))
    return graph_model, set(conv_layer.values())


def _static_shapes(graph_model) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """Every tensor's static shape, by onnx's shape inference (the graphs are traced at one input size)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(graph_model).graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.value_info, *inferred.input, *inferred.output)}


def _shuffles_after(users: list, consumers: dict[str, list], values: dict[str, np.ndarray]) -> list:  # type: ignore[type-arg]
    """The pixel shuffles (DepthToSpace, CRD, one block size) that a conv's output feeds and nothing else, each
    directly or through one Slice of rows (the striped HR tail's); empty if anything else reads the output."""
    from onnx import helper

    shuffles = []
    for user in users:
        if user.op_type == "Slice":
            axes = values.get(user.input[3]) if len(user.input) > 3 else None
            steps = values.get(user.input[4]) if len(user.input) > 4 else np.ones(1)
            after = consumers.get(user.output[0], [])
            if axes is None or steps is None or set(axes.tolist()) - {2, -2} or np.any(steps != 1) or len(after) != 1:
                return []
            user = after[0]
        shuffles.append(user)
    sizes = {helper.get_attribute_value(a) for u in shuffles for a in u.attribute if a.name == "blocksize"}
    modes = {helper.get_attribute_value(a) for u in shuffles for a in u.attribute if a.name == "mode"}
    if not shuffles or any(u.op_type != "DepthToSpace" for u in shuffles) or len(sizes) != 1 or modes != {b"CRD"}:
        return []
    return shuffles


def dcr_order(channels: int, blocks: int) -> np.ndarray:
    """The output-channel order of a conv before a pixel shuffle that turns PyTorch's CRD layout (channel
    ``c*b*b + k`` goes to block position ``k``) into DCR's (``k*C + c``): entry n is the old index of channel n."""
    return np.arange(channels).reshape(channels // blocks**2, blocks**2).T.reshape(-1)


def _channels_last_shuffle(node, shape: list[int], const: Callable[[str, np.ndarray], str]) -> list:  # type: ignore[type-arg]
    """A pixel shuffle of DCR-ordered channels as Transpose/Reshape ops in channels-last order.

    onnxruntime runs integer convs channels-last: its DepthToSpace is channels-first and single-threaded, so
    each shuffle cost two layout transposes and a per-element copy. Written channels-last, onnxruntime cancels
    the layout transposes against its own, and with DCR's channel order the one transpose left copies whole
    pixels (C contiguous codes); bench/deploy.py measures the effect (docs/findings.md)."""
    from onnx import helper

    n, channels, h, w = shape
    b = next(int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "blocksize")
    c = channels // b**2
    steps = [("Transpose", [0, 2, 3, 1]), ("Reshape", [n, h, w, b, b, c]), ("Transpose", [0, 1, 3, 2, 4, 5]),
             ("Reshape", [n, h * b, w * b, c]), ("Transpose", [0, 3, 1, 2])]
    nodes, x = [], node.input[0]
    for k, (op, arg) in enumerate(steps):
        out = f"{node.name}.nhwc{k}"
        if op == "Reshape":
            shape_name = const(f"{node.name}.shape{k}", np.array(arg, dtype=np.int64))
            nodes.append(helper.make_node(op, [x, shape_name], [out], name=out))
        else:
            nodes.append(helper.make_node(op, [x], [out], name=out, perm=arg))
        x = out
    return nodes


def graph_name(path: Path, role: str, offset: int = 0) -> Path:
    """The file of one graph of an export whose forward graph (bit offset 0) is ``path``."""
    bits = f".bits{offset:+d}" if offset else ""
    part = "" if role == "forward" else f".{role}"
    return path.with_name(f"{path.stem}{bits}{part}.onnx")


def export_basicvsr(model: nn.Module, path: str | Path, lr_size: tuple[int, int],
                    out_ranges: dict[str, tuple[float, float]] | None = None, manifest: dict | None = None,
                    weights: str = "auto", replace: bool = True) -> list[Path]:
    """Write the graphs for LR frames of ``lr_size`` (h, w); float graphs for an unquantized model.
    ``weights`` chooses the 8-bit weight storage (:func:`weight_storage`; ``auto`` fits this CPU);
    ``replace`` False keeps graphs already at ``path`` (a cache that several processes fill).

    ``path`` is the forward graph at the model's own bits; it is written last and records the SHA-256 of
    every other file, so a set mixed from two exports is refused when loaded."""
    onnx = require("onnx", "export", "ONNX export")

    check_exportable(model)
    offsets = video_bit_offsets(model)
    plain = float_copy(model)
    quants = {offset: integer_layers(model, offset) for offset in offsets}
    if quants[0] and out_ranges is None:
        raise VsrqError("a quantized export needs output ranges (calibrate_outputs)")
    h, w = lr_size
    if h < 64 or w < 64:
        raise VsrqError(f"LR size {w}x{h} is below BasicVSR's 64x64 minimum")
    path = Path(path)
    if path.suffix != ".onnx":
        raise VsrqError(f"{path}: the export target must end in .onnx")
    c = plain.num_feat
    x = torch.zeros(1, 3, h, w)
    flow = torch.zeros(1, 2, h, w)
    feat = torch.zeros(1, c, h, w)
    # a dynamic input range is one per frame in the simulation: stripes would each find their own
    stripes = 1 if any(q.dynamic for q in quants[0].values()) else tail_stripes(lr_size)
    traced = [("forward", ForwardStep(plain, stripes), (x, flow, feat, feat) if plain.bidirectional else (x, flow, feat),
               ["x_t", "flow", "g_prev", "h_t"] if plain.bidirectional else ["x_t", "flow", "g_prev"], ["g_t", "y_t"])]
    if plain.bidirectional:
        traced.append(("backward", BackwardStep(plain), (x, flow, feat), ["x_t", "flow", "h_next"], ["h_t"]))
    traced = [(role, _trace(module.eval(), args, ins, outs)) for role, module, args, ins, outs in traced]
    graphs = [("flow", 0, _trace(FlowStep(plain).eval(), (x, x), ["x_ref", "x_supp"], ["flow"]))]
    for offset in sorted(offsets, key=lambda o: o == 0):  # the entry graph (offset 0, forward) last
        for role, graph in reversed(traced):
            graphs.append((role, offset, graph if len(offsets) == 1 else _copy(onnx, graph)))
    controller = model.controller if isinstance(model, QuantizedModel) else None
    companions: dict[str, str] = {}
    handled: dict[int, set[str]] = {offset: set() for offset in offsets}
    with staged_files(path, replace) as stage:
        for role, offset, graph in graphs:
            target = graph_name(path, role, offset)
            if quants[offset]:  # the flow graph too: a quantized SPyNet (quantize_auxiliary) runs on integer convs
                graph, layers = insert_qdq(graph, quants[offset], out_ranges or {}, "base.", weights)
                handled[offset] |= layers
            graph.ir_version = IR_VERSION
            meta = {"vsrq_role": role, "vsrq_video_bits": str(offset), "vsrq_lr_size": json.dumps([h, w]),
                    "vsrq_num_feat": str(c), "vsrq_bidirectional": str(plain.bidirectional),
                    "vsrq_quantized": str(bool(quants[0]))}
            if role == "forward" and offset == 0:
                meta["vsrq_companions"] = json.dumps(companions)
                meta["vsrq_video_bit_offsets"] = json.dumps(list(offsets))
                if controller is not None:
                    meta["vsrq_controller"] = json.dumps(controller.state_manifest())
                if manifest is not None:
                    meta["vsrq_manifest"] = json.dumps(manifest)
            for k, v in meta.items():
                graph.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
            onnx.checker.check_model(graph)
            onnx.save(graph, str(stage / target.name))
            companions[target.name] = file_sha256(stage / target.name)
        missing = {name for offset in offsets for name in set(quants[offset]) - handled[offset]}
        if missing:
            raise VsrqError(f"export lost track of quantized layers: {', '.join(sorted(missing)[:3])}")
    return [path] + [graph_name(path, role, offset) for role, offset, _ in graphs[:-1]]


class AnimeSRStep(nn.Module):
    def __init__(self, base: AnimeSR) -> None:
        super().__init__()
        self.base = base

    def forward(self, frames: torch.Tensor, sr: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.step(frames, sr, state)


def export_animesr(model: nn.Module, path: str | Path, lr_size: tuple[int, int],
                   out_ranges: dict[str, tuple[float, float]] | None = None, manifest: dict | None = None,
                   weights: str = "auto", replace: bool = True) -> list[Path]:
    """AnimeSR's one step graph, ``(frames (1, 9, h, w), sr (1, 3, 4h, 4w), state (1, C, h, w)) -> (sr, state)`` at
    the padded size of ``lr_size``: the recurrence has no flow and one direction, so one graph is the model."""
    onnx = require("onnx", "export", "ONNX export")

    check_exportable(model)
    plain = float_copy(model)
    quant = integer_layers(model)
    if quant and out_ranges is None:
        raise VsrqError("a quantized export needs output ranges (calibrate_outputs)")
    path = Path(path)
    if path.suffix != ".onnx":
        raise VsrqError(f"{path}: the export target must end in .onnx")
    h, w = padded_size(lr_size)
    args = (torch.zeros(1, 9, h, w), torch.zeros(1, 3, SCALE * h, SCALE * w), torch.zeros(1, plain.num_feat, h, w))
    graph = _trace(AnimeSRStep(plain).eval(), args, ["frames", "sr", "state"], ["sr_next", "state_next"])
    if quant:
        graph, layers = insert_qdq(graph, quant, out_ranges or {}, "base.", weights)
        if set(quant) - layers:
            raise VsrqError(f"export lost track of quantized layers: {', '.join(sorted(set(quant) - layers)[:3])}")
    graph.ir_version = IR_VERSION
    meta = {"vsrq_family": "animesr", "vsrq_role": "step", "vsrq_lr_size": json.dumps(list(lr_size)),
            "vsrq_num_feat": str(plain.num_feat), "vsrq_quantized": str(bool(quant))}
    if manifest is not None:
        meta["vsrq_manifest"] = json.dumps(manifest)
    for k, v in meta.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(graph)
    with staged_files(path, replace) as stage:
        onnx.save(graph, str(stage / path.name))
    return [path]


def export_graphs(model: nn.Module, path: str | Path, lr_size: tuple[int, int],
                  out_ranges: dict[str, tuple[float, float]] | None = None, manifest: dict | None = None,
                  weights: str = "auto", replace: bool = True) -> list[Path]:
    """The graphs of a BasicVSR (:func:`export_basicvsr`) or AnimeSR (:func:`export_animesr`) model."""
    base = model.base if isinstance(model, QuantizedModel) else model
    export = export_animesr if isinstance(base, AnimeSR) else export_basicvsr
    return export(model, path, lr_size, out_ranges, manifest, weights, replace)


def _copy(onnx, graph):  # type: ignore[no-untyped-def]
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    return out
