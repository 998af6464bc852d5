"""The torch-int8 runtime: integer convs written as PyTorch's quantize/dequantize pattern agree with the
simulation (eager here), compile to oneDNN's int8 convolution (slow), and refuse what they cannot run."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import smooth_frames, write_clip
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8
from vsrq.models.basicvsr import tail_stripes
from vsrq.quant.grid import quantize_to_int
from vsrq.runtime.onnx_export import LayerQuant, dcr_order
from vsrq.runtime.torch_int8 import (
    BranchedInt8Conv,
    CastConv,
    DcrPixelShuffle,
    Int8Conv,
    Packaged,
    _dense,
    _signature,
    _Unit,
    has_compiler,
    input_codes,
    item_by_item,
    lower,
    package_folder,
    reciprocal,
    reorder_outputs,
    static_codes,
)
from vsrq.version import __version__

QUIET = dict(log=lambda s: None, show_progress=False)


@pytest.fixture(scope="module")
def qbasicvsr_w4a4():
    """QBasicVSR W4A4 on a tiny model: per-layer bits (TS-LBA) and per-video bits (FG-VBA, -1/0/+1)."""
    calib = _synthetic_calib(3, 3)
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"batch": 2, "omse_refresh": False})
    return quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)


@pytest.fixture(scope="module")
def quantvsr_w4a4():
    """QuantVSR's layer W4A4 on a tiny model: Hadamard rotation, rank-8 SVD branch, LBA, dynamic input ranges with
    a searched clip ratio."""
    cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, options={"branch": "svd", "fixed_rank": 8, "act_clip": True})
    return quantize_model(_loaded(num_feat=16), cfg, _synthetic_calib(2, 3), **QUIET)


def _clip(seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(smooth_frames(4, 64, 64, seed=seed)).float().div(255).permute(0, 3, 1, 2)[None]


def test_int8_conv_is_the_b_bit_grid_in_closed_form():
    """Input codes clamped to 0..2^b-1 around the zero-point, weights as int8 codes times their row scale:
    computed here with numpy-style arithmetic, independently of the quantized_decomposed ops."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-7, 8, size=(4, 3, 3, 3)).astype(np.int8)
    wscale = np.array([0.1, 0.2, 0.05, 0.3], np.float32)
    lq = LayerQuant(codes, wscale, 0.25, 5, input_bits=4)
    conv = Int8Conv({0: lq}, torch.tensor([0.5, -0.5, 0.0, 1.0]), dict(stride=1, padding=1, dilation=1, groups=1))
    x = torch.from_numpy(rng.normal(0.0, 3.0, size=(1, 3, 8, 8)).astype(np.float32))  # far past 15 codes either way
    q = np.clip(np.floor(x.numpy() / 0.25 + 0.5) + 5, 0, 15)  # no exact halves in normal samples
    xd = torch.from_numpy(((q - 5) * 0.25).astype(np.float32))
    w = torch.from_numpy(codes.astype(np.float32) * wscale[:, None, None, None])
    expected = F.conv2d(xd, w, torch.tensor([0.5, -0.5, 0.0, 1.0]), padding=1)
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, atol=1e-5)
    assert q.min() == 0 and q.max() == 15  # both clamps were exercised


def test_lowered_static_model_agrees_with_the_simulation():
    calib = _synthetic_calib(2, 3)
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="minmax", wbits=8, abits=8), calib, **QUIET)
    int8 = lower(qm, compile=False)
    assert len(int8.int8_convs()) == len(qm.layers())
    # static ranges: the HR tail runs in stripes, its convs on oneDNN's op directly, its shuffles in DCR order
    assert int8.tiled and isinstance(int8.base.pixel_shuffle, DcrPixelShuffle)
    kinds = {name: type(m) for name, m in int8.base.named_modules() if isinstance(m, (Int8Conv, BranchedInt8Conv))}
    assert {n for n, k in kinds.items() if k is BranchedInt8Conv} == {"upconv1", "upconv2", "conv_hr", "conv_last"}
    x = _clip()
    with torch.no_grad():
        sim, out = tensor_to_uint8(qm(x)[0]), tensor_to_uint8(int8(x)[0])
    assert min(psnr(a, b) for a, b in zip(out, sim)) > 45  # codes differ only at rounding ties
    assert any(layer.weight is not None for layer in qm.layers().values())  # the simulation was left as it was


@pytest.mark.parametrize("lowered", ["float", "int8", "branched"])
def test_a_dcr_shuffle_after_reordered_outputs_is_the_pixel_shuffle(lowered: str):
    """Reordering a conv's output channels into DCR order and shuffling them channels-last gives PyTorch's pixel
    shuffle exactly, for each kind of lowered conv."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3, padding=1)
    x = torch.randn(2, 8, 5, 7)
    if lowered == "float":
        module: nn.Module = conv
    else:
        codes = torch.randint(-128, 128, (32, 8, 3, 3), dtype=torch.int8)
        scale = torch.rand(32) / 100 + 1e-3
        conv.weight.data = codes.float() * scale[:, None, None, None]
        quant = {0: LayerQuant(codes.numpy(), scale.numpy(), 0.05, 128, 8)}
        geometry = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
        module = (Int8Conv(quant, conv.bias, geometry) if lowered == "int8"
                  else BranchedInt8Conv(conv, quant, geometry))
    with torch.no_grad():
        ref = F.pixel_shuffle(module(x), 2)
        reorder_outputs(module, torch.from_numpy(dcr_order(32, 2)))
        out = DcrPixelShuffle(2)(module(x))
    assert torch.equal(out, ref)


def test_lowered_qbasicvsr_runs_the_video_bits_its_controller_picks(qbasicvsr_w4a4):
    qm = qbasicvsr_w4a4
    int8 = lower(qm, compile=False)
    offsets = set()
    for x in (torch.full((1, 4, 3, 64, 64), 0.5), _clip(), torch.rand(1, 4, 3, 64, 64)):
        with torch.no_grad():
            sim, out = tensor_to_uint8(qm(x)[0]), tensor_to_uint8(int8(x)[0])
        offset = int(qm.controller.last_bits.item())
        assert {c.offset for c in int8.int8_convs()} == {offset}
        offsets.add(offset)
        assert min(psnr(a, b) for a, b in zip(out, sim)) > 40, offset
    assert offsets == {-1, 1}
    hi = {c.inputs[o][2] for c in int8.int8_convs() for o in (-1, 0, 1)}
    assert 15 in hi or 7 in hi  # some inputs run on fewer than 8 bits


def test_run_time_input_codes_are_the_b_bit_grid_in_closed_form():
    """The whole tensor's [min, max] times the clip ratio, widened to hold 0, split into 2^b - 1 steps; computed
    here in numpy float64 (float32 ties are too rare in normal samples to differ)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 2.0, size=(1, 3, 16, 16)).astype(np.float32)
    for bits, ratio in ((4, 0.8), (8, None), (6, 0.5)):
        codes, scale, zp = input_codes(torch.from_numpy(x), bits, None if ratio is None else torch.tensor(ratio))
        lo, hi = min(x.min() * (ratio or 1), 0.0), max(x.max() * (ratio or 1), 0.0)
        step = (float(hi) - float(lo)) / (2**bits - 1)
        z = np.clip(np.round(-lo / step), 0, 2**bits - 1)
        expected = np.clip(np.round(x.astype(np.float64) / step + z), 0, 2**bits - 1)
        assert codes.dtype == torch.uint8 and int(zp) == z and float(scale) == pytest.approx(step, rel=1e-6)
        assert np.array_equal(codes.numpy(), expected), bits
        assert codes.max() == 2**bits - 1 and (ratio is None or (x > hi).any())  # the clip ratio saturated some
    codes = static_codes(torch.from_numpy(x), 4, reciprocal(0.25), 5.0)  # a static grid
    assert codes.dtype == torch.uint8 and np.array_equal(codes.numpy(), np.clip(np.round(x / 0.25) + 5, 0, 15))
    scale = float(torch.tensor(0.1))  # no exact reciprocal: the codes are still the simulation's, bit for bit
    sim = quantize_to_int(torch.from_numpy(x), torch.tensor(scale), torch.tensor(7.0), 6, symmetric=False)
    assert torch.equal(static_codes(torch.from_numpy(x), 6, reciprocal(scale), 7.0), sim.to(torch.uint8))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lowered_quantvsr_layer_agrees_with_the_simulation(quantvsr_w4a4, dtype: str):
    """Rotation, integer conv on run-time codes and the low-rank branch as the simulation runs them; with the float
    parts in bf16 (rotations, branches, the flow network) about 45 dB here."""
    qm = quantvsr_w4a4
    int8 = lower(qm, compile=False, float_dtype=dtype)
    convs = int8.int8_convs()
    assert len(convs) == len(qm.layers()) and all(isinstance(c, BranchedInt8Conv) for c in convs)
    assert all(c.rotation is not None for c in convs)
    branches = {n: m.lowrank_down for n, m in int8.base.named_modules() if isinstance(m, BranchedInt8Conv)}
    assert {n for n, d in branches.items() if d is not None} == {n for n, layer in qm.layers().items() if layer.rank}
    assert {d.dtype for d in branches.values() if d is not None} == {getattr(torch, dtype)}
    assert {c.rotation.dtype for c in convs} == {getattr(torch, dtype)}
    floats = [m for m in int8.base.modules() if type(m) is nn.Conv2d]  # SPyNet's, the only convs left float
    assert len(floats) == sum(type(m) is nn.Conv2d for m in qm.base.spynet.modules()) > 0
    assert {m.weight.dtype for m in floats} == {getattr(torch, dtype)}
    assert sum(isinstance(m, CastConv) for m in int8.base.modules()) == (len(floats) if dtype == "bfloat16" else 0)
    assert any(c.inputs[0][1] is not None for c in convs)  # some clip ratios below 1 carried over
    x = _clip()
    with torch.no_grad():
        sim, out = tensor_to_uint8(qm(x)[0]), tensor_to_uint8(int8(x)[0])
    assert min(psnr(a, b) for a, b in zip(out, sim)) > (55 if dtype == "float32" else 45)


def test_what_has_no_torch_int8_path_is_refused(quantvsr_w4a4):
    calib = _synthetic_calib(2, 3)
    with pytest.raises(VsrqError, match="quantized models"):
        lower(_loaded(num_feat=8).model, compile=False)
    cfg = QuantConfig(method="viditq", wbits=4, abits=4)
    qm = quantize_model(_loaded(num_feat=8), cfg, calib, **QUIET)
    with pytest.raises(VsrqError, match=r"has no torch-int8 path \(activations token-wise\); use --runtime onnxruntime"):
        lower(qm, compile=False)
    with pytest.raises(VsrqError, match="float dtype must be auto, float32 or bfloat16; got 'fp16'"):
        lower(quantvsr_w4a4, compile=False, float_dtype="fp16")


def test_a_package_is_chosen_by_its_inputs_layout_not_only_their_shape():
    """A package reads its inputs with its example's strides, unchecked: frames permuted from an NHWC array (Vid4's
    loader) must not reach a package built for NCHW frames of the same shape (7.8 dB on calendar when they did)."""
    nchw = torch.rand(1, 3, 12, 20)
    nhwc = torch.rand(1, 12, 20, 3).permute(0, 3, 1, 2)
    assert _signature(nchw) == "1x3x12x20float32" and _signature(None) == "none"
    assert _signature(nhwc).startswith("1x3x12x20float32s") and _signature(nhwc) != _signature(nchw)
    assert _signature(nhwc) == _signature(nhwc.clone())  # the export's example keeps the layout it was given
    clips = [torch.rand(1, t, 12, 20, 3).permute(0, 1, 4, 2, 3) for t in (5, 9)]  # frames of clips of two lengths
    assert _signature(clips[0][:, 2]) == _signature(clips[1][:, 7]) == _signature(nhwc)
    assert _dense(clips[0][:, 2]) and not _dense(nchw[..., ::2])  # a strided slice is made contiguous first

def test_package_folders_are_keyed_by_the_checkpoint_bytes_and_the_float_dtype(quantvsr_w4a4, tmp_path: Path,
                                                                               monkeypatch):
    """Packages are kept under $VSRQ_CACHE/torch-int8 per checkpoint content (not its name), float dtype and vsrq
    version: a renamed copy shares them; an edited file or another dtype never reuses them."""
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path / "cache"))
    host = quantvsr_w4a4.host
    a, b, c = tmp_path / "a.vsrq", tmp_path / "b.vsrq", tmp_path / "c.vsrq"
    a.write_bytes(b"one checkpoint")
    b.write_bytes(b"one checkpoint")
    c.write_bytes(b"one checkpoinT")
    folder = package_folder(a, torch.float32, host)
    assert folder.parent == tmp_path / "cache" / "torch-int8" and folder.name.endswith(__version__)
    assert package_folder(b, torch.float32, host) == folder
    assert package_folder(c, torch.float32, host) != folder
    assert package_folder(a, torch.bfloat16, host) != folder


def test_static_networks_run_item_by_item_so_a_clip_length_needs_no_new_package(qbasicvsr_w4a4, tmp_path: Path,
                                                                                  monkeypatch):
    """SpyNet's batch is a clip's frame pairs: run pair by pair, clips of 3 and 5 frames (batches of 2 and 4 pairs)
    load the same batch-1 package, at the unsplit model's output."""
    keys = []

    def load(self, key, args):  # the unit itself stands in for its package: nothing is compiled here
        keys.append(key)
        return _Unit(self.owner, self.fn, tuple(a is not None for a in args))

    monkeypatch.setattr(Packaged, "_load", load)
    packaged, eager = lower(qbasicvsr_w4a4, compile=False).compile(tmp_path), lower(qbasicvsr_w4a4, compile=False)
    with torch.no_grad():
        for frames in (3, 5):
            clip = torch.from_numpy(smooth_frames(frames, 64, 64, seed=frames)).float().div(255).permute(0, 3, 1, 2)
            assert torch.allclose(packaged(clip[None]), eager(clip[None]), atol=1e-5)
    flows = {k for k in keys if k.startswith("spynet-")}
    assert len(flows) == 1 and flows.pop().startswith("spynet-1x3x64x64float32"), flows  # batch 1, both clips


def test_item_by_item_concatenates_one_call_per_item():
    calls = []

    def unit(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2 if y is None else x + y

    x, y = torch.rand(3, 2, 4), torch.rand(3, 2, 4)
    assert torch.equal(item_by_item(unit)(x, y), x + y) and calls == [(1, 2, 4)] * 3
    assert torch.equal(item_by_item(unit)(x, None), x * 2) and len(calls) == 6
    assert torch.equal(item_by_item(unit)(x, y[:1]), x + y[:1]) and calls[-1] == (3, 2, 4)  # unequal batches: whole


def _doubling_unit(folder: Path) -> Packaged:
    owner = nn.Module()
    return Packaged(lambda x: x * 2, owner, "unit", folder, lambda: 0)


@pytest.mark.fault
def test_a_failed_ahead_of_time_compile_is_one_line_and_leaves_no_package(tmp_path: Path, monkeypatch):
    """Inductor's C++ build fails with pages of compiler output: the user gets its first line and the way out, and
    the package folder holds nothing a later run would load; an unwritable cache names VSRQ_CACHE."""
    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile error\n/tmp/x.cpp:1:1: error: ...\n" + "noise\n" * 500)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    unit = _doubling_unit(tmp_path / "packages")
    with pytest.raises(VsrqError) as info:
        unit(torch.ones(1, 3, 4, 4))
    message = str(info.value)
    assert "\n" not in message and "RuntimeError: C++ compile error" in message and "--runtime onnxruntime" in message
    assert message.startswith("torch-int8 could not compile unit-1x3x4x4float32-o0-t")
    assert [p.name for p in (tmp_path / "packages").iterdir()] == []  # no package, no temporary folder

    def unwritable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "packages"))

    monkeypatch.setattr("vsrq.runtime.torch_int8.staged_files", unwritable)
    with pytest.raises(VsrqError, match=r"cannot keep torch-int8 packages in .*packages \(Permission denied\); "
                                        "set VSRQ_CACHE to a writable folder"):
        unit(torch.ones(1, 3, 4, 4))


@pytest.mark.fault
def test_a_package_that_does_not_load_says_which_file_to_delete(tmp_path: Path):
    """A package file that is not one (a truncated copy from another machine): one line naming it."""
    unit = _doubling_unit(tmp_path)
    x = torch.ones(2, 5)
    (tmp_path / f"unit-{_signature(x)}-o0-t{torch.get_num_threads()}.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(VsrqError, match=r"torch-int8 package .*unit-2x5float32-o0-t\d+\.pt2 does not load "
                                        r"\(.*\); delete it to compile it again"):
        unit(x)


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="Inductor needs a C++ compiler")
def test_compiled_model_runs_onednn_int8_convs_and_the_cli_upscales(qbasicvsr_w4a4, tmp_path: Path, monkeypatch):
    """Compiled with the host's steps (the HR tail whole, here in 3 stripes: static ranges make striping exact),
    the integer model agrees with the eager, unstriped lowering at every bit offset and size, and upscales."""
    from torch._inductor.utils import run_and_get_code

    from vsrq import api, checkpoint
    from vsrq.atomic import cache_dir
    from vsrq.data.frames import list_frames, read_frame
    from vsrq.models import basicvsr

    picked = []
    monkeypatch.setattr(basicvsr, "STRIPE_LR_PIXELS", 64 * 64 // 3 + 1)
    monkeypatch.setattr(basicvsr, "tail_stripes", lambda size: picked.append(tail_stripes(size)) or picked[-1])
    int8, eager = lower(qbasicvsr_w4a4), lower(qbasicvsr_w4a4, compile=False)
    x = _clip()
    with torch.no_grad():
        out, code = run_and_get_code(int8, x)
        assert "onednn.qconv" in "\n".join(code)  # integer kernels, not a float conv on dequantized values
        assert picked and set(picked) == {3}  # traced once per compiled variant, each striped
        offsets = set()
        for clip in (x, torch.full((1, 4, 3, 64, 64), 0.5), torch.rand(1, 3, 3, 64, 80)):  # other bit offsets, size
            out = int8(clip)
            offsets.add(int8.int8_convs()[0].offset)
            ref = eager(clip)
            assert min(psnr(a, b) for a, b in zip(tensor_to_uint8(out[0]), tensor_to_uint8(ref[0]))) > 40
    assert len(offsets) > 1
    ckpt = checkpoint.save(qbasicvsr_w4a4, tmp_path / "q.vsrq")
    frames = smooth_frames(5, 64, 64, seed=4)
    write_clip(tmp_path / "lr", frames)
    api.upscale(ckpt, tmp_path / "lr", tmp_path / "sr", runtime="torch-int8", show_progress=False)
    got = [read_frame(p) for p in list_frames(tmp_path / "sr")]
    with torch.no_grad():
        sim = tensor_to_uint8(qbasicvsr_w4a4(torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)[None])[0])
    assert len(got) == 5 and min(psnr(a, b) for a, b in zip(got, sim)) > 38
    # a checkpoint file's units were compiled ahead of time into the cache; a second run only loads them
    packages = list(cache_dir().glob("torch-int8/*/*.pt2"))
    units = {p.name.split("-")[0] for p in packages}
    assert units >= {"spynet", "align", "backward_trunk", "forward_trunk", "reconstruct"}
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", lambda *a, **k: pytest.fail("compiled again"))
    api.upscale(ckpt, tmp_path / "lr", tmp_path / "sr2", runtime="torch-int8", show_progress=False)
    assert all(np.array_equal(a, read_frame(p)) for a, p in zip(got, list_frames(tmp_path / "sr2")))


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="Inductor needs a C++ compiler")
def test_a_packaged_quantvsr_trunk_runs_its_branched_layers_ahead_of_time(quantvsr_w4a4, tmp_path: Path):
    """Rotation, run-time ranges, vsrq's oneDNN op and the low-rank branch, exported and compiled by AOTInductor
    into one package per input shape, agree with the eager lowering; a new unit on the same folder loads it."""
    eager = lower(quantvsr_w4a4, compile=False)
    trunk = eager.base.backward_trunk
    unit = Packaged(trunk.forward, trunk, "backward_trunk", tmp_path, lambda: 0)
    x = torch.rand(1, 19, 48, 40)
    with torch.no_grad():
        ref, out = trunk(x), unit(x)
        again = Packaged(trunk.forward, trunk, "backward_trunk", tmp_path, lambda: 0)(x)
    threads = torch.get_num_threads()
    assert [p.name for p in tmp_path.glob("*.pt2")] == [f"backward_trunk-1x19x48x40float32-o0-t{threads}.pt2"]
    assert torch.equal(out, again)
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="Inductor needs a C++ compiler")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_quantvsr_layer_runs_onednn_int8_convs_in_one_graph_per_module(quantvsr_w4a4, dtype: str):
    """Compiled, every branched layer's integer conv is vsrq's oneDNN op inside the modules' graphs (no graph break
    per layer: the range, rounding and casts fuse around it, bf16 casts included), and agrees with the eager
    lowering."""
    from torch._inductor.utils import run_and_get_code

    int8, eager = lower(quantvsr_w4a4, float_dtype=dtype), lower(quantvsr_w4a4, compile=False, float_dtype=dtype)
    x = _clip()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        out, code = run_and_get_code(int8, x)
        ref = eager(x)
    assert "vsrq.int8_conv2d" in "\n".join(code)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert min(psnr(a, b) for a, b in zip(tensor_to_uint8(out[0]), tensor_to_uint8(ref[0]))) > (55 if dtype == "float32" else 45)
