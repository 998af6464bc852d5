"""Splitting convs over concatenations: exact in float, one activation range per source, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import smooth_frames, tiny_basicvsr, write_clip
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq import checkpoint
from vsrq.cli import main
from vsrq.config import LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.models.host import HOSTS
from vsrq.quant.layers import QuantLayer
from vsrq.quant.split import SplitInputConv, split_concat_inputs

HOST = HOSTS["basicvsr"]

QUIET = dict(log=lambda s: None, show_progress=False)


def _clip() -> torch.Tensor:
    return torch.from_numpy(smooth_frames(3, 64, 64, seed=9)).float().div(255).permute(0, 3, 1, 2)[None]


@pytest.mark.parametrize("sizes,stride,padding", [((3, 13), 1, 1), ((4, 4, 8), 2, 0), ((16,), 1, 2)])
def test_split_conv_equals_the_conv(sizes, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 5, 3, stride, padding)
    x = torch.randn(2, 16, 11, 9)
    split = SplitInputConv(conv, sizes)
    torch.testing.assert_close(split(x), conv(x), rtol=0, atol=1e-5)
    assert [p.in_channels for p in split.parts] == list(sizes)
    assert [p.bias is not None for p in split.parts] == [True] + [False] * (len(sizes) - 1)
    assert sum(p.weight.numel() for p in split.parts) == conv.weight.numel()


@pytest.mark.fault
def test_bad_splits_are_refused():
    with pytest.raises(VsrqError, match="does not add up"):
        SplitInputConv(nn.Conv2d(8, 4, 3), (3, 4))
    with pytest.raises(VsrqError, match="ungrouped"):
        SplitInputConv(nn.Conv2d(8, 4, 3, groups=2), (4, 4))
    with pytest.raises(VsrqError, match="no convs over concatenations"):
        split_concat_inputs(nn.Sequential(nn.Conv2d(3, 3, 1)), {})


def test_basicvsr_split_changes_nothing_in_float():
    model = tiny_basicvsr()
    split = tiny_basicvsr()
    expected = {"backward_trunk.main.0": (3, 8), "forward_trunk.main.0": (3, 8), "fusion": (8, 8)}
    assert split_concat_inputs(split, HOST.concat_inputs(split)) == expected
    with torch.no_grad():
        torch.testing.assert_close(split(_clip()), model(_clip()), rtol=0, atol=1e-5)
    uni = tiny_basicvsr(bidirectional=False)
    assert HOST.concat_inputs(uni) == {"forward_trunk.main.0": (3, 8)}


def test_each_source_gets_its_own_range_and_checkpoints_round_trip(tmp_path: Path):
    calib = _synthetic_calib()
    cfg = QuantConfig(method="minmax", wbits=4, abits=4, split_concat=True)
    qm = quantize_model(_loaded(), cfg, calib, **QUIET)
    layers = qm.layers()
    assert "forward_trunk.main.0" not in layers and "fusion.parts.1" in layers
    # the frame part reads exactly the calibration frames: MinMax gives their global range
    frames = torch.cat(calib.clips)
    q = layers["forward_trunk.main.0.parts.0"].input_quantizer
    lo, hi = float(q.lower.detach()), float(q.upper.detach())
    assert (lo, hi) == (pytest.approx(float(frames.min()), abs=1e-6), pytest.approx(float(frames.max()), abs=1e-6))
    feats = layers["forward_trunk.main.0.parts.1"].input_quantizer
    assert (float(feats.lower.detach()), float(feats.upper.detach())) != (lo, hi)
    # the frame keeps a 4-bit step of 1/15 of its own range, far finer than one shared with the features
    plain = quantize_model(_loaded(), QuantConfig(method="minmax", wbits=4, abits=4), calib, **QUIET)
    shared = plain.layers()["forward_trunk.main.0"].input_quantizer
    assert float((shared.upper - shared.lower).detach()) > hi - lo
    x = _clip()
    with torch.no_grad():
        y = qm(x)
    loaded = checkpoint.load(checkpoint.save(qm, tmp_path / "m.vsrq"))
    assert loaded.manifest["config"]["split_concat"] is True
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_rules_for_a_split_conv_cover_its_parts():
    rules = (LayerRule("*_trunk.main.0", skip=True),)
    cfg = QuantConfig(method="minmax", wbits=4, abits=4, split_concat=True, rules=rules)
    qm = quantize_model(_loaded(), cfg, _synthetic_calib(), **QUIET)
    assert not any(".main.0.parts" in name for name in qm.layers())
    assert isinstance(qm.base.fusion.parts[0], QuantLayer)
    assert qm.manifest["skipped"]["forward_trunk.main.0.parts.1"] == "rule *_trunk.main.0"


def test_cli_split_concat_quantize_then_upscale(tmp_path: Path):
    torch.save({"params": tiny_basicvsr().state_dict()}, tmp_path / "tiny.pth")
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    write_clip(tmp_path / "lr", smooth_frames(3, 64, 64, seed=2))
    assert main(["quantize", "--model", str(tmp_path / "tiny.pth"), "--calib", str(tmp_path / "calib"),
                 "--calib-clips", "1", "--calib-frames", "3", "--wbits", "4", "--abits", "4", "--split-concat",
                 "-o", str(tmp_path / "q.vsrq")]) == 0
    manifest = checkpoint.read_manifest(tmp_path / "q.vsrq")
    assert manifest["config"]["split_concat"] and "forward_trunk.main.0.parts.0" in manifest["layers"]
    assert main(["upscale", str(tmp_path / "lr"), str(tmp_path / "sr"), "--model", str(tmp_path / "q.vsrq")]) == 0
    assert len(list((tmp_path / "sr").glob("*.png"))) == 3
