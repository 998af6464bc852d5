"""The torch-int8 runtime: integer convs written as PyTorch's quantize/dequantize pattern agree with the
simulation (eager here), compile to oneDNN's int8 convolution (slow), and refuse what they cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import smooth_frames, write_clip
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8
from vsrq.runtime.onnx_export import LayerQuant
from vsrq.runtime.torch_int8 import Int8Conv, has_compiler, lower

QUIET = dict(log=lambda s: None, show_progress=False)


@pytest.fixture(scope="module")
def qbasicvsr_w4a4():
    """QBasicVSR W4A4 on a tiny model: per-layer bits (TS-LBA) and per-video bits (FG-VBA, -1/0/+1)."""
    calib = _synthetic_calib(3, 3)
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"batch": 2, "omse_refresh": False})
    return quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)


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
    x = _clip()
    with torch.no_grad():
        sim, out = tensor_to_uint8(qm(x)[0]), tensor_to_uint8(int8(x)[0])
    assert min(psnr(a, b) for a, b in zip(out, sim)) > 45  # codes differ only at rounding ties
    assert any(layer.weight is not None for layer in qm.layers().values())  # the simulation was left as it was


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


def test_what_has_no_torch_int8_path_is_refused():
    calib = _synthetic_calib(2, 3)
    with pytest.raises(VsrqError, match="quantized models"):
        lower(_loaded(num_feat=8).model, compile=False)
    cfg = QuantConfig(method="quantvsr", wbits=4, abits=4, options={"branch": "svd", "lba": False})
    qm = quantize_model(_loaded(num_feat=8), cfg, calib, **QUIET)
    with pytest.raises(VsrqError, match=r"has no torch-int8 path .*use --runtime onnxruntime"):
        lower(qm, compile=False)


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="Inductor needs a C++ compiler")
def test_compiled_model_runs_onednn_int8_convs_and_the_cli_upscales(qbasicvsr_w4a4, tmp_path: Path):
    from torch._inductor.utils import run_and_get_code

    from vsrq import api, checkpoint
    from vsrq.data.frames import list_frames, read_frame

    int8, eager = lower(qbasicvsr_w4a4), lower(qbasicvsr_w4a4, compile=False)
    x = _clip()
    with torch.no_grad():
        out, code = run_and_get_code(int8, x)
        assert "onednn.qconv" in "\n".join(code)  # integer kernels, not a float conv on dequantized values
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
