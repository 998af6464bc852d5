"""Quantized layers, swapping by patterns, packing, checkpoints and accounting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import smooth_frames, tiny_basicvsr, write_clip
from vsrq import checkpoint
from vsrq.cli import main
from vsrq.config import LayerRule, QuantConfig, QuantizerSpec
from vsrq.data.clips import CalibrationSet
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.models.catalog import LoadedModel, loaded_module
from vsrq.quant import accounting
from vsrq.quant.layers import QuantLayer
from vsrq.quant.packing import pack_bits, pack_codes, unpack_bits, unpack_codes
from vsrq.quant.swap import plan_layers, summary

W4 = QuantizerSpec(bits=4, symmetric=True, granularity="channel")
A4 = QuantizerSpec(bits=4)


@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_round_trip_every_bit_width(bits: int):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=1001)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(1001 * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, 1001), codes)
    signed = torch.from_numpy(rng.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), size=(3, 7)))
    assert torch.equal(unpack_codes(pack_codes(signed, bits, True), bits, True, (3, 7)).long(), signed)


def test_pack_layout_is_two_nibbles_per_byte():
    assert pack_bits(np.array([0x3, 0xA]), 4).tolist() == [0xA3]  # LSB-first
    assert pack_bits(np.array([1, 2, 3, 4]), 6).size == 3
    with pytest.raises(VsrqError, match="out of range"):
        pack_bits(np.array([16]), 4)


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.Conv2d(6, 5, 3, padding=1), torch.randn(2, 6, 8, 8)),
        (nn.Conv3d(4, 3, (2, 3, 3), padding=1), torch.randn(1, 4, 3, 6, 6)),
        (nn.Linear(12, 7), torch.randn(5, 12)),
        (nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1), torch.randn(1, 4, 5, 5)),
    ],
)
def test_each_supported_layer_quantizes_and_freezes_bit_exactly(module: nn.Module, x: torch.Tensor):
    torch.manual_seed(0)
    layer = QuantLayer(module, W4, QuantizerSpec(bits=8, dynamic=True))
    layer.weight_quantizer.init_from_tensor(layer.residual_weight())
    with torch.no_grad():
        ref = module(x)
        out = layer(x)
        assert out.shape == ref.shape
        assert (out - ref).pow(2).mean() < ref.pow(2).mean() * 0.05  # close to float at W4A8
        layer.freeze_weight()
        assert layer.weight is None and torch.equal(layer(x), out)
    assert len(torch.unique(layer.weight_int)) <= 15


def test_plan_and_summary_on_basicvsr():
    model = tiny_basicvsr()
    choices = plan_layers(model, ("*_trunk.main.2.*",), ("spynet*",), (LayerRule("forward_trunk.*", abits=6),), 4, 4)
    quantized = {c.name: c for c in choices if c.quantize}
    assert set(quantized) == {f"{d}_trunk.main.2.0.conv{i}" for d in ("backward", "forward") for i in (1, 2)}
    assert quantized["forward_trunk.main.2.0.conv1"].abits == 6
    assert quantized["backward_trunk.main.2.0.conv1"].abits == 4
    text = summary(choices)
    assert "quantized 4 layer(s)" in text and "excluded" in text and "outside scope" in text


@pytest.mark.parametrize(
    "include, exclude, message",
    [
        (("nothing.*",), (), "pattern 'nothing.*' matches no module"),
        (("*",), ("*",), "nothing to quantize"),
        (("lrelu",), (), "unsupported layer lrelu \\(LeakyReLU\\)"),
    ],
)
@pytest.mark.fault
def test_pattern_errors(include, exclude, message):
    with pytest.raises(VsrqError, match=message):
        plan_layers(tiny_basicvsr(), include, exclude)


def _synthetic_calib(n: int = 2, t: int = 3, size: int = 64) -> CalibrationSet:
    clips = [torch.from_numpy(smooth_frames(t, size, size, seed=i)).float().div(255).permute(0, 3, 1, 2) for i in range(n)]
    return CalibrationSet(clips, [f"synthetic{i}" for i in range(n)], "0" * 64, "synthetic test clips")


def _loaded(seed: int = 0, num_feat: int = 8) -> LoadedModel:
    model = tiny_basicvsr(seed, num_feat=num_feat)
    return loaded_module(model, name="tiny")


@pytest.mark.parametrize("method", ["minmax", "percentile", "omse", "dbdc", "ema"])
def test_static_methods_end_to_end_and_checkpoint_round_trip(method: str, tmp_path: Path):
    cfg = QuantConfig(method=method, wbits=4, abits=4, scope="fq")
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(), log=lambda s: None, show_progress=False)
    x = torch.from_numpy(smooth_frames(3, 64, 64, seed=9)).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        y = qm(x)
        y_fp = _loaded().model(x)
    assert 0 < (y - y_fp).abs().mean() < 0.05
    path = checkpoint.save(qm, tmp_path / "m.vsrq")
    loaded = checkpoint.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    m = loaded.manifest
    assert m["method"] == method and m["calibration"]["clips"] == ["synthetic0", "synthetic1"]
    assert m["seed"] == 0 and "torch" in m["versions"] and m["calibration"]["threads"] == torch.get_num_threads()
    assert all(e["weight"]["bits"] == 4 for e in m["layers"].values())


def test_same_input_same_seed_same_result():
    cfg = QuantConfig(method="omse", wbits=4, abits=4)
    a = quantize_model(_loaded(), cfg, _synthetic_calib(), log=lambda s: None, show_progress=False)
    b = quantize_model(_loaded(), cfg, _synthetic_calib(), log=lambda s: None, show_progress=False)
    for (na, la), (nb, lb) in zip(a.layers().items(), b.layers().items()):
        assert na == nb and torch.equal(la.input_quantizer.upper, lb.input_quantizer.upper)


def test_packed_checkpoint_is_small(tmp_path: Path):
    """W4 weights take half a byte each: the quantized layers' bytes shrink 8x against float32."""
    cfg = QuantConfig(method="minmax", wbits=4, abits=8)
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(), log=lambda s: None, show_progress=False)
    path = checkpoint.save(qm, tmp_path / "m.vsrq")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name, layer in qm.layers().items():
            packed = f.get_tensor(f"base.{name}.weight_int")
            assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(layer.weight.numel() / 2)
            assert f"base.{name}.weight" not in f.keys()


@pytest.mark.fault
def test_manifest_that_does_not_match_is_refused(tmp_path: Path):
    cfg = QuantConfig(method="minmax", wbits=4, abits=4)
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(), log=lambda s: None, show_progress=False)
    qm.manifest["model"]["spec"]["kwargs"]["num_feat"] = 16  # claims a wider model than the tensors hold
    path = checkpoint.save(qm, tmp_path / "bad.vsrq")
    with pytest.raises(VsrqError, match="manifest does not match the model"):
        checkpoint.load(path)
    (tmp_path / "junk.vsrq").write_bytes(b"junk")
    with pytest.raises(VsrqError, match="not a vsrq checkpoint"):
        checkpoint.load(tmp_path / "junk.vsrq")


def test_accounting_closed_form():
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    full = accounting.count(conv, torch.zeros(1, 4, 10, 10))
    assert full.params == pytest.approx((8 * 4 * 9 + 8) / 1e6)
    assert full.macs == pytest.approx(100 * 8 * 4 * 9 / 1e9)
    layer = QuantLayer(conv[0], W4, A4)
    layer.weight_quantizer.init_from_tensor(layer.residual_weight())
    layer.input_quantizer.set_range(torch.tensor([0.0]), torch.tensor([1.0]))
    q = accounting.count(nn.Sequential(layer), torch.zeros(1, 4, 10, 10))
    assert q.params_effective == pytest.approx((8 * 4 * 9 * 4 / 32 + 8) / 1e6)
    assert q.macs_effective == pytest.approx(full.macs * 4 / 32)
    assert q.fab == 4.0


def test_cli_quantize_upscale_with_checkpoint(tmp_path: Path, capsys):
    torch.save({"params": tiny_basicvsr().state_dict()}, tmp_path / "tiny.pth")
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    write_clip(tmp_path / "lr", smooth_frames(3, 64, 64, seed=2))
    assert main(["quantize", "--model", str(tmp_path / "tiny.pth"), "--calib", str(tmp_path / "calib"),
                 "--calib-clips", "2", "--calib-frames", "3", "--method", "dbdc", "--wbits", "6", "--abits", "6",
                 "--pq", "-o", str(tmp_path / "q.vsrq")]) == 0
    assert main(["upscale", str(tmp_path / "lr"), str(tmp_path / "sr"), "--model", str(tmp_path / "q.vsrq")]) == 0
    assert len(list((tmp_path / "sr").glob("*.png"))) == 3
    assert main(["info", str(tmp_path / "q.vsrq")]) == 0
    assert "W6A6 x4" in capsys.readouterr().out


def test_cli_budget_is_the_methods_fab_budget(tmp_path: Path):
    torch.save({"params": tiny_basicvsr().state_dict()}, tmp_path / "tiny.pth")
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    out = tmp_path / "q.vsrq"
    assert main(["--quiet", "quantize", "--model", str(tmp_path / "tiny.pth"), "--calib", str(tmp_path / "calib"),
                 "--calib-clips", "1", "--calib-frames", "3", "--method", "qbasicvsr", "--wbits", "4", "--abits", "4",
                 "--budget", "3.5", "--option", "finetune=false", "--option", "fg_vba=false", "-o", str(out)]) == 0
    qm = checkpoint.load(out)
    assert qm.manifest["config"]["options"]["fab_budget"] == 3.5
    assert accounting.count(qm).fab <= 3.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "magic"], "unknown method 'magic'"),
        (["--wbits", "12"], "wbits=12 is outside"),
        (["--include", "nope.*"], "matches no module"),
        (["--calib-crop", "96"], "smaller than the 96px crop"),
        (["--option", "foo=1"], "has no option"),
        (["--budget", "4"], "takes none"),
        (["--method", "qbasicvsr", "--budget", "4", "--option", "fab_budget=5"], "disagree"),
    ],
)
@pytest.mark.fault
def test_cli_quantize_bad_input(tmp_path: Path, capsys, extra, message):
    torch.save({"params": tiny_basicvsr().state_dict()}, tmp_path / "tiny.pth")
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    argv = ["quantize", "--model", str(tmp_path / "tiny.pth"), "--calib", str(tmp_path / "calib"), "--calib-clips", "1",
            "--calib-frames", "3", "-o", str(tmp_path / "q.vsrq")] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "q.vsrq").exists()
