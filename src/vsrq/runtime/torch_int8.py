"""PyTorch's own int8 execution (``--runtime torch-int8``): oneDNN's integer convolutions through Inductor.

Each quantized conv becomes the pattern PyTorch's x86 int8 path compiles: its input quantized to uint8 codes
on the layer's b-bit grid (``quantize_per_tensor`` with ``quant_max = 2^b - 1``, so a 4-bit activation is
clamped to 0..15 exactly as the simulation does), dequantized, and a conv on the dequantized int8 weight
codes. ``torch.compile`` with freezing rewrites every such dequantize-conv into one ``onednn.qconv_pointwise``
and fuses each quantize with the float ops before it (ReLU, residual add) into one vectorized kernel. The
model's own Python recurrence runs around the compiled modules, so streaming, chunking and FG-VBA's per-video
bits (one compiled variant per bit offset, chosen per window by the checkpoint's controller) work as in the
simulation. Layers whose input range is computed at run time (QuantVSR's, QuaRot's, SVDQuant's), with their
rotation and low-rank branch, call oneDNN's int8 conv through :func:`int8_conv2d` instead (Inductor matches only
constant scales). Everything left float (the flow network, weight-only layers, rotations, low-rank branches) runs in
one ``float_dtype``: bf16 where the CPU has it natively. Needs a C++ compiler (Inductor builds its kernels). A
checkpoint file's units are compiled ahead of time by AOTInductor, once per input shape, into packages that later
runs load (:class:`Packaged`, :func:`package_folder`); a model in memory is compiled by ``torch.compile`` in each
process.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import nn
from torch._dynamo import config as dynamo_config
from torch._inductor import config as inductor_config

from vsrq.atomic import cache_dir, file_sha256, staged_files
from vsrq.checkpoint import layer_manifest
from vsrq.errors import VsrqError, cause
from vsrq.models.host import ModelCall, ModelHost
from vsrq.progress import say
from vsrq.quant.controller import controller_from_manifest
from vsrq.quant.grid import quantize_to_int, scale_zero_point
from vsrq.quant.qmodel import QuantizedModel
from vsrq.runtime.deployable import layer_integer_problems
from vsrq.runtime.onnx_export import LayerQuant, dcr_order, float_copy, integer_layers, video_bit_offsets
from vsrq.version import __version__

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


@torch.library.custom_op("vsrq::int8_conv2d", mutates_args=())
def int8_conv2d(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, weight_codes: torch.Tensor,
                weight_scale: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int], groups: int) -> torch.Tensor:
    """oneDNN's int8 conv on uint8 input codes whose scale and zero point are tensors of the run, float output
    (channels-last). Opaque to the compiler, which has no fake kernel for oneDNN's packed weights: the weight is
    packed per call (about 0.1 ms for a 64->64 3x3 conv, under 1% of the layer)."""
    packed = torch.ops.onednn.qconv_prepack(weight_codes, weight_scale, 1.0, 0, stride, padding, dilation, groups, None)
    zeros = torch.zeros(weight_scale.numel(), dtype=torch.int64)
    y = torch.ops.onednn.qconv2d_pointwise.tensor(codes, scale, zero_point, packed, weight_scale, zeros, bias, stride,
                                                  padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "")
    return y.contiguous(memory_format=torch.channels_last)


@int8_conv2d.register_fake
def _(codes, scale, zero_point, weight_codes, weight_scale, bias, stride, padding, dilation, groups):  # type: ignore[no-untyped-def]
    n, _, h, w = codes.shape
    kh, kw = weight_codes.shape[2:]
    size = [(d + 2 * p - dl * (k - 1) - 1) // s + 1 for d, p, dl, k, s in zip((h, w), padding, dilation, (kh, kw), stride)]
    out = codes.new_empty((n, weight_codes.shape[0], *size), dtype=torch.float32)
    return out.contiguous(memory_format=torch.channels_last)


def input_codes(x: torch.Tensor, bits: int, ratio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 codes of ``x`` on its b-bit grid with their scale and zero point, from the run-time [min, max] of the
    whole tensor times the clip ratio, exactly as the simulation computes them."""
    lower, upper = torch.aminmax(x)
    if ratio is not None:
        lower, upper = lower * ratio, upper * ratio
    scale, zero_point = scale_zero_point(lower, upper, bits, symmetric=False)
    codes = quantize_to_int(x, scale, zero_point, bits, symmetric=False).to(torch.uint8)
    return codes, scale, zero_point.to(torch.int64)


def static_codes(x: torch.Tensor, bits: int, inverse: float, zero_point: float) -> torch.Tensor:
    """uint8 codes of ``x`` on a static b-bit grid, :func:`~vsrq.quant.grid.quantize_to_int`'s formula with Python
    numbers (``inverse``: the float32 reciprocal of the scale, :func:`reciprocal`): a traced graph then holds no
    arithmetic on constant tensors, which freezing's constant folding would have to fold (and AOTInductor's export
    fails to)."""
    return torch.clamp(torch.round(x * inverse + zero_point), 0, 2**bits - 1).to(torch.uint8)


def reciprocal(scale: float) -> float:
    """1 / ``scale`` as float32 computes it (the simulation's rounding multiplies by it)."""
    return float(torch.reciprocal(torch.tensor(scale, dtype=torch.float32)))


class BranchedInt8Conv(nn.Module):
    """A QuantVSR / QuaRot / SVDQuant layer (or any conv with a run-time input range) on oneDNN's int8 conv,
    called directly: the input divided by the smoothing scales, rotated (the Hadamard matrix as a float 1x1 conv,
    built from the checkpoint's signs), turned into b-bit codes (:func:`input_codes`), convolved by
    ``onednn.qconv2d_pointwise`` on its int8 weight codes with a float output; plus the low-rank branch
    on the unrotated input as two convs; rotation and branch in ``float_dtype`` (bf16 halves their cost on CPUs
    with native bf16), their outputs back in float32 for the range and the sum.

    The quantize pattern that Inductor rewrites needs constant scales, hence the explicit op: its input scale and
    zero point are tensors of the run. Compiled, the range, rounding and casts fuse into one pass."""

    def __init__(self, float_conv: nn.Module, quant: dict[int, LayerQuant], geometry: dict,
                 float_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        base = quant[0]
        self.geometry = {k: list(v) if isinstance(v, tuple) else [v, v] for k, v in geometry.items() if k != "groups"}
        self.groups = int(geometry.get("groups", 1))
        self.register_buffer("codes", torch.from_numpy(base.weight_codes.copy()).contiguous(memory_format=torch.channels_last))
        self.register_buffer("weight_scale", torch.from_numpy(base.weight_scale.copy()))
        bias = getattr(float_conv, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.smooth = _frozen(getattr(float_conv, "smooth", None))
        rotation = getattr(float_conv, "rotation", None)
        self.rotation = _frozen(None if rotation is None else
                                rotation.to(float_dtype).contiguous(memory_format=torch.channels_last))
        self.float_dtype = float_dtype
        down, up = getattr(float_conv, "lowrank_down", None), getattr(float_conv, "lowrank_up", None)
        self.lowrank_down = _frozen(None if down is None else down.to(float_dtype))
        self.lowrank_up = _frozen(None if up is None else up.to(float_dtype))
        # per video bit offset: (bits, clip ratio, static grid); the static grid as numbers for the rounding (the
        # scale's inverse, the zero point) and as the tensors oneDNN's op takes; None: a run-time range
        self.inputs = {o: (q.input_bits, None if q.clip_ratio == 1.0 else torch.tensor(q.clip_ratio),
                           None if q.dynamic else (reciprocal(float(q.input_scale)), float(q.input_zero_point),
                                                   torch.tensor(q.input_scale, dtype=torch.float32),
                                                   torch.tensor(int(q.input_zero_point), dtype=torch.int64)))
                       for o, q in quant.items()}
        self.offset = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        low = x.to(self.float_dtype) if self.rotation is not None or self.lowrank_down is not None else x
        xin = x if self.rotation is None else F.conv2d(low, self.rotation).to(x.dtype)
        bits, ratio, grid = self.inputs[self.offset]
        if grid is None:
            codes, scale, zero_point = input_codes(xin, bits, ratio)
        else:
            codes, scale, zero_point = static_codes(xin, bits, *grid[:2]), *grid[2:]
        g = self.geometry
        y = torch.ops.vsrq.int8_conv2d(codes, scale, zero_point, self.codes, self.weight_scale, self.bias, g["stride"],
                                       g["padding"], g["dilation"], self.groups)
        if self.lowrank_down is not None:
            branch = F.conv2d(low, self.lowrank_down, None, g["stride"], g["padding"], g["dilation"])
            y = y + F.conv2d(branch, self.lowrank_up).to(y.dtype)
        return y


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class CastConv(nn.Module):
    """A conv left float (the flow network's, a weight-only or float-kept layer's) run in another dtype: input cast
    in, output cast back, so the float32 stream around it is unchanged (compiled, the casts fuse into the
    element-wise kernels beside the conv)."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = conv.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.to(self.conv.weight.dtype)).to(x.dtype)


class DcrPixelShuffle(nn.Module):
    """A pixel shuffle of channels in DCR order (block position k's C channels contiguous, see :func:`dcr_order`),
    written on the channels-last layout so that each output pixel copies C contiguous values. PyTorch's CRD order
    gathers every r^2-th channel, which Inductor loops channel by channel: 350 ms of a W8A8 frame at LR 180x320
    for BasicVSR's second shuffle, 38 ms in DCR order."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, h, w = x.shape
        r = self.factor
        y = x.permute(0, 2, 3, 1).reshape(n, h, w, r, r, channels // r**2).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * r, w * r, channels // r**2).permute(0, 3, 1, 2)


def reorder_outputs(module: nn.Module, order: torch.Tensor) -> None:
    """Permute a lowered conv's output channels: weights, per-channel scales, bias, the low-rank up projection."""
    if isinstance(module, CastConv):
        module = module.conv
    if isinstance(module, nn.Conv2d):
        module.weight.data = module.weight.data[order]
    else:
        assert isinstance(module, (Int8Conv, BranchedInt8Conv))
        layout = torch.channels_last if isinstance(module, BranchedInt8Conv) else torch.contiguous_format
        module.codes = module.codes[order].contiguous(memory_format=layout)
        if isinstance(module, Int8Conv):
            module.scale = module.scale[order]
        else:
            module.weight_scale = module.weight_scale[order]
            if module.lowrank_up is not None:
                module.lowrank_up.data = module.lowrank_up.data[order]
    if module.bias is not None:
        module.bias.data = module.bias.data[order]


def _out_channels(module: nn.Module) -> int:
    inner = module.conv if isinstance(module, CastConv) else module
    return int((inner.weight if isinstance(inner, nn.Conv2d) else inner.codes).shape[0])


class Int8Model(QuantizedModel):
    """A quantized model whose integer convs are :class:`Int8Conv` or :class:`BranchedInt8Conv`; runs like the
    simulation (same host, same controller), on integer kernels once compiled (:meth:`compile`). ``tiled``: every
    input range is static, so the host's steps may run in tiles."""

    tiled: bool = False
    offset: int = 0  # the video bit offset of the call in progress

    def forward(self, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        extra = self.controller.prepare(ModelCall(args, kwargs, 0)) if self.controller is not None else {}
        if self.controller is not None:
            bits = self.controller.last_bits
            offsets = {int(round(float(b))) for b in bits}
            if len(offsets) != 1:
                raise VsrqError("the torch-int8 runtime runs one video bit offset per call: upscale one clip at a time")
            offset = self.offset = offsets.pop()
            for conv in self.int8_convs():
                conv.offset = offset
        # compilation happens in the first call, and again per frame size and bit offset: every conv compiled on
        # its own shares Int8Conv.forward's code, so the per-code limit of 8 variants is raised with it
        with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self.host.forward(self.base, *args, **kwargs, **extra)

    def int8_convs(self) -> list[Int8Conv | BranchedInt8Conv]:
        return [m for m in self.base.modules() if isinstance(m, (Int8Conv, BranchedInt8Conv))]

    def compile(self, packages: Path | None = None) -> "Int8Model":  # type: ignore[override]
        """Compile the steps the host declares whole (:meth:`ModelHost.compiled_steps`: BasicVSR's warp before each
        trunk and HR tail, so the activations, pixel shuffles and quantizations between convs fuse), and every child
        of the base network that holds weights (a child a step calls is traced into the step), with freezing on,
        which folds the weights into prepacked oneDNN constants. Shapes are static: with automatic dynamic shapes,
        the geometry of convs that share code turns symbolic and freezing cannot pack their float weights.

        Without ``packages``, by ``torch.compile`` in this process: each unit is traced and built at its first call
        (about a minute for BasicVSR), in every process, since Inductor's cache skips graphs that hold prepacked
        weights. With a ``packages`` folder (:func:`package_folder`), each unit and input shape is compiled once
        ahead of time by AOTInductor into a package kept there (:class:`Packaged`), which later runs load in
        milliseconds. The model's own loop around the units stays Python."""
        units: list[tuple[str, nn.Module, Callable[..., torch.Tensor], bool]] = []  # name, owner, function, step
        for name, kwargs in self.host.compiled_steps(self.base, tiled=self.tiled).items():
            units.append((name, self.base, functools.partial(getattr(self.base, name), **kwargs), True))
        for name, child in self.base.named_children():
            if next(child.parameters(), None) is not None or next(child.buffers(), None) is not None:
                units.append((name, child, child.forward, False))
        for name, owner, fn, step in units:
            convs = [m for m in owner.modules() if isinstance(m, (Int8Conv, BranchedInt8Conv))]
            if packages is not None:  # a network whose convs have one setting needs one package for every offset
                varies = step or any(len(m.inputs) > 1 for m in convs)
                wrapped: Callable[..., torch.Tensor] = Packaged(fn, owner, name, packages,
                                                                (lambda: self.offset) if varies else (lambda: 0))
            else:
                wrapped = torch.compile(fn, dynamic=False)
            run_time_ranges = any(grid is None for m in convs if isinstance(m, BranchedInt8Conv)
                                  for _, _, grid in m.inputs.values())
            if not step and not run_time_ranges:
                wrapped = item_by_item(wrapped)
            setattr(self.base if step else owner, name if step else "forward", wrapped)
        return self


def item_by_item(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` called on each item of a batch in turn, the outputs concatenated: one compiled shape serves every
    batch size. For a network that computes each item on its own (every input range static, no run-time range
    taken over the batch): SpyNet's batch is a clip's frame pairs, so every clip or chunk length was a new compile
    (a 50-frame video built five SpyNet packages)."""
    def run(*args: torch.Tensor | None) -> torch.Tensor:
        sizes = {a.shape[0] for a in args if a is not None}
        if len(sizes) != 1 or (n := sizes.pop()) == 1 or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return fn(*args)
        return torch.cat([fn(*(None if a is None else a[i:i + 1] for a in args)) for i in range(n)])

    return run


class _Unit(nn.Module):
    """What AOTInductor exports for one unit: its owner registered as a submodule (so weights are the program's
    parameters and buffers, not lifted constants), the call's absent (None) arguments bound."""

    def __init__(self, owner: nn.Module, fn: Callable[..., torch.Tensor], present: tuple[bool, ...]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn
        self.present = present

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = iter(tensors)
        return self.fn(*(next(given) if p else None for p in self.present))


def _signature(a: torch.Tensor | None) -> str:
    """What a package is compiled for, per argument: its shape and dtype, and its layout unless contiguous (the
    strides of dims longer than 1). A package reads its inputs with the strides of its example, unchecked, and the
    same shape comes in two layouts: a frame cut from a clip permuted from an NHWC array, or from an NCHW one."""
    if a is None:
        return "none"
    name = "x".join(map(str, a.shape)) + str(a.dtype).removeprefix("torch.")
    strides = (str(s if n > 1 else 0) for n, s in zip(a.shape, a.stride()))
    return name if a.is_contiguous() else name + "s" + "_".join(strides)


def _dense(a: torch.Tensor) -> bool:
    """No gaps between its elements (a permutation of a contiguous block, size-1 dims aside): its copy as the
    export's example keeps its layout."""
    return a.numel() == 0 or 1 + sum((n - 1) * s for n, s in zip(a.shape, a.stride())) == a.numel()


class Packaged:
    """One unit of an :class:`Int8Model` (a host step or a child network) run from AOTInductor packages: one per
    input shape and layout (:func:`_signature`), video bit offset and thread count (kernels split work for N threads),
    compiled at the first call that needs it (export with freezing, about 30 s for a BasicVSR trunk at 180x320) and
    kept in ``folder`` (written whole or not at all), loaded by later calls and later processes. Called while another
    unit is being traced, it is that unit's code."""

    def __init__(self, fn: Callable[..., torch.Tensor], owner: nn.Module, name: str, folder: Path,
                 offset: Callable[[], int]) -> None:
        self.fn, self.owner, self.name, self.folder, self.offset = fn, owner, name, Path(folder), offset
        self.runners: dict[str, Callable[..., torch.Tensor]] = {}

    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.fn(*args)
        args = tuple(a if a is None or _dense(a) else a.contiguous() for a in args)
        key = f"{self.name}-{'-'.join(map(_signature, args))}-o{self.offset()}-t{torch.get_num_threads()}"
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = self._load(key, args)
        return runner(*(a for a in args if a is not None))

    def _load(self, key: str, args: tuple[torch.Tensor | None, ...]) -> Callable[..., torch.Tensor]:
        path = self.folder / f"{key}.pt2"
        if not path.is_file():
            say(f"torch-int8: compiling {key} ahead of time (once; kept in {self.folder})")
            unit = _Unit(self.owner, self.fn, tuple(a is not None for a in args))
            try:
                with staged_files(path, replace=False) as stage, torch.inference_mode(False), torch.no_grad():
                    program = torch.export.export(unit, tuple(a.clone() for a in args if a is not None), strict=False)
                    torch._inductor.aoti_compile_and_package(program, package_path=str(stage / path.name),
                                                             inductor_configs={"freezing": True})
            except VsrqError:
                raise
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise  # a full disk says so in the CLI's one line
                raise VsrqError(f"cannot keep torch-int8 packages in {self.folder} ({exc.strerror}); set VSRQ_CACHE "
                                "to a writable folder") from exc
            except Exception as exc:  # the export or the C++ build of Inductor's code: its first line, not pages
                raise VsrqError(f"torch-int8 could not compile {key} ({cause(exc)}); "
                                "run it with --runtime onnxruntime") from exc
        try:
            return torch._inductor.aoti_load_package(str(path))
        except Exception as exc:
            raise VsrqError(f"torch-int8 package {path} does not load ({cause(exc)}); "
                            "delete it to compile it again") from exc


def package_folder(checkpoint: Path, float_dtype: torch.dtype, host: ModelHost) -> Path:
    """Where the AOTInductor packages of a checkpoint file are kept: ``$VSRQ_CACHE`` / ``torch-int8`` / a SHA-256
    of the file, of the code that builds the graphs (this module, the ONNX exporter's lowering helpers, the host
    and its network), PyTorch's version, the CPU's vector ISA and the float dtype; and vsrq's version. An edited
    checkpoint, changed code or another machine never reuses stale kernels."""
    digest = hashlib.sha256()
    file_sha256(checkpoint, digest)
    for module in dict.fromkeys((__name__, "vsrq.runtime.onnx_export", type(host).__module__)):
        digest.update(Path(inspect.getfile(sys.modules[module])).read_bytes())
    digest.update(f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()} {float_dtype}".encode())
    return cache_dir() / "torch-int8" / f"{digest.hexdigest()[:24]}-{__version__}"


def has_compiler() -> bool:
    return bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))


FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def float_dtype_for(name: str) -> torch.dtype:
    """``auto``: bf16 where oneDNN runs it natively (AVX512-BF16 or AMX), else float32; or either by name."""
    if name == "auto":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    if name not in FLOAT_DTYPES:
        raise VsrqError(f"float dtype must be auto, {' or '.join(FLOAT_DTYPES)}; got {name!r}")
    return FLOAT_DTYPES[name]


def lower(model: nn.Module, compile: bool = True, float_dtype: str = "auto", packages: Path | None = None) -> Int8Model:
    """The torch-int8 model of a quantized model (a copy; ``model`` is untouched).

    Every layer with integer weights and a static per-tensor input range becomes an :class:`Int8Conv`; layers
    with a rotation, smoothing, a low-rank branch or a run-time input range become a :class:`BranchedInt8Conv`
    (its rotation and branch in ``float_dtype``, see :func:`float_dtype_for`); weight-only layers run as float convs
    on their dequantized weights, in ``float_dtype`` like every other conv left float. One clear error for
    anything else. ``packages``: compile ahead of time into that folder (see :meth:`Int8Model.compile`)."""
    if not isinstance(model, QuantizedModel):
        raise VsrqError("the torch-int8 runtime runs quantized models (.vsrq); run float models with --runtime torch")
    if compile and not has_compiler():
        raise VsrqError("the torch-int8 runtime needs a C++ compiler (g++ or clang++, or $CXX) for Inductor's kernels")
    dtype = float_dtype_for(float_dtype)
    branched = set()
    layers = model.layers()
    for name, layer in layers.items():
        problems = [] if layer.kind == "conv2d" else [layer.kind]
        if layer.rank or layer.rotation is not None or layer.smooth is not None:
            if layer.input_quantizer is None:
                problems.append("a rotation, smoothing or low-rank branch on a weight-only layer")
            branched.add(name)
        if layer.input_quantizer is not None:
            problems += layer_integer_problems(layer_manifest(layer))
            if layer.input_quantizer.spec.dynamic:
                branched.add(name)
        if problems:
            raise VsrqError(f"layer {name} has no torch-int8 path ({', '.join(dict.fromkeys(problems))}); "
                            "use --runtime onnxruntime")
    offsets = video_bit_offsets(model)
    quant = {o: integer_layers(model, o) for o in offsets}
    # a run-time range is one per tensor in the simulation: a tile would find its own
    tiled = not any(q.dynamic for layer_quant in quant.values() for q in layer_quant.values())
    if tiled:
        branched |= set(quant[0]) & set(model.host.tiled_layers(model.base))
    base = float_copy(model)  # every quantized layer a float conv on its dequantized weight, bias alignment folded
    for name in quant[0]:  # those with an integer input become integer convs; weight-only ones stay float
        conv = base.get_submodule(name)
        layer_quant = {o: quant[o][name] for o in offsets}
        geometry = dict(layers[name].geometry)
        base.set_submodule(name, BranchedInt8Conv(conv, layer_quant, geometry, dtype) if name in branched
                           else Int8Conv(layer_quant, conv.bias, geometry))
    if dtype != torch.float32:
        for name, conv in [(n, m) for n, m in base.named_modules() if type(m) is nn.Conv2d]:
            base.set_submodule(name, CastConv(conv, dtype))
    shuffles = model.host.pixel_shuffles(base)
    for conv_name, shuffle_name in shuffles.items():
        factor = base.get_submodule(shuffle_name).upscale_factor
        conv = base.get_submodule(conv_name)
        reorder_outputs(conv, torch.from_numpy(dcr_order(_out_channels(conv), factor)))
    for shuffle_name in set(shuffles.values()):
        base.set_submodule(shuffle_name, DcrPixelShuffle(base.get_submodule(shuffle_name).upscale_factor))
    base.eval()
    controller = None
    if model.controller is not None:  # rebuilt on the new network: it reads the motion of the same SPyNet
        controller = controller_from_manifest(model.controller.state_manifest(), base, model.host)
    out = Int8Model(base, model.manifest, model.host, controller)
    out.tiled = tiled
    return out.compile(packages) if compile else out
