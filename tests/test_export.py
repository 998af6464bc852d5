"""ONNX export and onnxruntime execution on a small model: agreement, QDQ structure, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import smooth_frames, write_clip
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.cli import main
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vsrq import checkpoint  # noqa: E402
from vsrq.runtime.onnx_export import IR_VERSION, calibrate_outputs, export_basicvsr  # noqa: E402
from vsrq.runtime.ort import OrtBasicVSR  # noqa: E402

QUIET = dict(log=lambda s: None, show_progress=False)


@pytest.fixture(scope="module")
def w8a8():
    torch.manual_seed(0)
    calib = _synthetic_calib(2, 3)
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="minmax", wbits=8, abits=8), calib, **QUIET)
    return qm, calib


def _clip(seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(smooth_frames(4, 64, 64, seed=seed)).float().div(255).permute(0, 3, 1, 2)[None]


def test_ort_agrees_with_the_simulation(w8a8, tmp_path: Path):
    qm, calib = w8a8
    export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    x = _clip()
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, sim)) > 45  # only 8-bit output rounding differs
    part = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(1, 3))[0])
    assert np.array_equal(part, ort_out[1:3])


def test_split_concat_exports_as_one_integer_conv_per_source(tmp_path: Path):
    calib = _synthetic_calib(2, 3)
    cfg = QuantConfig(method="minmax", wbits=8, abits=8, split_concat=True)
    qm = quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)
    files = export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    weights = {i.name for f in files for i in onnx.load(str(f)).graph.initializer}
    assert {"forward_trunk.main.0.parts.0.weight_int8", "forward_trunk.main.0.parts.1.weight_int8"} <= weights
    x = _clip()
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, sim)) > 45


def test_qdq_structure(w8a8, tmp_path: Path):
    qm, calib = w8a8
    files = export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips))
    quantized = set(qm.layers())
    seen = set()
    for f in files:
        model = onnx.load(str(f))
        assert model.ir_version == IR_VERSION
        onnx.checker.check_model(model)
        producers = {o: n for n in model.graph.node for o in n.output}
        inits = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type != "Conv":
                continue
            w = node.input[1]
            if w in inits:  # a float conv: must be SPyNet, never a quantized layer
                assert w.startswith("base.spynet."), w
                continue
            wdq, xdq = producers[w], producers[node.input[0]]
            assert wdq.op_type == "DequantizeLinear" and xdq.op_type == "DequantizeLinear"
            assert inits[wdq.input[0]].data_type == onnx.TensorProto.INT8
            assert inits[xdq.input[2]].data_type == onnx.TensorProto.UINT8
            seen.add(wdq.input[0].rsplit(".weight_int8", 1)[0])
            if wdq.input[0] == "conv_last.weight_int8":  # 3 output channels run padded to 16, then sliced
                assert onnx.numpy_helper.to_array(inits[wdq.input[0]]).shape[0] == 16
                consumers = {i: n for n in model.graph.node for i in n.input}
                q = consumers[node.output[0]]
                dq = consumers[q.output[0]]
                assert consumers[dq.output[0]].op_type == "Slice"
        for node in model.graph.node:  # each pixel shuffle moves uint8 codes: Q/DQ on both sides, same scale
            if node.op_type == "DepthToSpace":
                before = producers[node.input[0]]
                after = next(n for n in model.graph.node if node.output[0] in n.input)
                assert before.op_type == "DequantizeLinear" and after.op_type == "QuantizeLinear"
                assert before.input[1:] == after.input[1:]
    assert seen == quantized


def test_float_export_matches_torch(tmp_path: Path):
    model = _loaded(num_feat=16).model
    export_basicvsr(model, tmp_path / "fp.onnx", (64, 64))
    x = _clip(4)
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "fp.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        ref = tensor_to_uint8(model(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, ref)) > 50


def test_unexportable_methods_and_wrong_sizes(tmp_path: Path, w8a8):
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="quarot", wbits=8, abits=8), _synthetic_calib(2, 3), **QUIET)
    with pytest.raises(VsrqError, match="cannot run on integer kernels"):
        export_basicvsr(qm, tmp_path / "r.onnx", (64, 64), {})
    w, calib = w8a8
    export_basicvsr(w, tmp_path / "m.onnx", (64, 64), calibrate_outputs(w, calib.clips))
    with pytest.raises(VsrqError, match="exported for 64x64 LR frames, the input is 72x64"):
        OrtBasicVSR(tmp_path / "m.onnx")(torch.zeros(1, 2, 3, 64, 72), range(2))
    with pytest.raises(VsrqError, match="must end in .onnx"):
        export_basicvsr(w, tmp_path / "m.bin", (64, 64), {})


def test_cli_export_and_upscale_with_onnxruntime(tmp_path: Path, w8a8, capsys):
    qm, _ = w8a8
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    ckpt = checkpoint.save(qm, tmp_path / "m.vsrq")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--size", "64x64",
                 "--calib", str(tmp_path / "calib"), "--calib-clips", "1", "--calib-frames", "3"]) == 0
    assert (tmp_path / "m.backward.onnx").exists()
    write_clip(tmp_path / "lr", smooth_frames(3, 64, 64, seed=2))
    assert main(["upscale", str(tmp_path / "lr"), str(tmp_path / "sr"), "--model", str(tmp_path / "m.onnx"),
                 "--runtime", "onnxruntime"]) == 0
    assert len(list((tmp_path / "sr").glob("*.png"))) == 3
