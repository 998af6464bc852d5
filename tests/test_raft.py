"""RAFT large (vsrq.models.raft) without its weights: the architecture's size and key layout, the
correlation volume and its lookup, convex upsampling, padding, the flow convention, loading, wiring."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.pipeline import RAFT_FILE, SmallUpscaler, as_upscaler, named_flow, raft_flow
from vsrq.models.mgldvsr.sampler import SamplerConfig
from vsrq.models.mgldvsr.small import SmallConfig, SmallMGLDVSR
from vsrq.models.raft import (
    RAFT,
    convex_upsample,
    coords_grid,
    correlation_pyramid,
    flow_estimator,
    load_raft,
    lookup,
)
from vsrq.models.spynet import flow_warp
from vsrq.models.weights import WEIGHTS_ENV


def _conv(cin: int, cout: int, kh: int, kw: int | None = None) -> int:
    return cin * cout * kh * (kh if kw is None else kw) + cout


def _encoder_params(out: int, batch_norm: bool) -> int:
    """BasicEncoder: stem, residual pairs 64->64, 64->96 (s2), 96->128 (s2), 1x1 head; BN adds 2 per channel."""
    convs = _conv(3, 64, 7) + _conv(128, out, 1)
    norm_channels = 64
    cin = 64
    for width, stride in ((64, 1), (96, 2), (128, 2)):
        convs += _conv(cin, width, 3) + 3 * _conv(width, width, 3)
        norm_channels += 4 * width
        if stride != 1:
            convs += _conv(cin, width, 1)
            norm_channels += width
        cin = width
    return convs + (2 * norm_channels if batch_norm else 0)


def _update_block_params() -> int:
    corr = 4 * 9 * 9
    motion = _conv(corr, 256, 1) + _conv(256, 192, 3) + _conv(2, 128, 7) + _conv(128, 64, 3) + _conv(256, 126, 3)
    gru = 3 * _conv(128 + 256, 128, 1, 5) + 3 * _conv(128 + 256, 128, 5, 1)
    head = _conv(128, 256, 3) + _conv(256, 2, 3)
    mask = _conv(128, 256, 3) + _conv(256, 576, 1)
    return motion + gru + head + mask


def test_raft_large_has_the_published_parameter_count():
    derived = _encoder_params(256, False) + _encoder_params(256, True) + _update_block_params()
    assert derived == 5_257_536
    net = RAFT()
    assert sum(p.numel() for p in net.parameters()) == derived
    assert round(derived / 1e6, 1) == 5.3 and round(derived / 1e6, 2) == 5.26
    keys = net.state_dict()
    # The shared shortcut norm appears under both official names; instance norms hold nothing.
    assert "cnet.layer2.0.norm3.running_mean" in keys and "cnet.layer2.0.downsample.1.running_mean" in keys
    assert not any(k.startswith("fnet.") and "norm" in k for k in keys)
    assert tuple(keys["update_block.mask.2.weight"].shape) == (576, 256, 1, 1)
    assert tuple(keys["update_block.gru.convz1.weight"].shape) == (128, 384, 1, 5)


def test_correlation_volume_is_scaled_dot_products_then_pooled():
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    pyr = correlation_pyramid(f1, f2, levels=3)
    assert [tuple(c.shape) for c in pyr] == [(16, 1, 4, 4), (16, 1, 2, 2), (16, 1, 1, 1)]
    for y1 in range(4):
        for x1 in range(4):
            dots = torch.tensor([[float((f1[0, :, y1, x1] * f2[0, :, y2, x2]).sum()) / math.sqrt(3)
                                  for x2 in range(4)] for y2 in range(4)])
            p = y1 * 4 + x1
            torch.testing.assert_close(pyr[0][p, 0], dots, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pyr[1][p, 0, 1, 0], dots[2:4, 0:2].mean(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pyr[2][p, 0, 0, 0], dots.mean(), rtol=1e-5, atol=1e-5)


def test_lookup_at_zero_flow_gives_the_centre_and_an_x_major_window():
    torch.manual_seed(1)
    h = w = 8
    f1, f2 = torch.randn(1, 5, h, w), torch.randn(1, 5, h, w)
    pyr = correlation_pyramid(f1, f2)
    out = lookup(pyr, coords_grid(1, h, w))
    assert tuple(out.shape) == (1, 4 * 81, h, w)
    corr = pyr[0].view(h, w, h, w)  # [y1, x1, y2, x2]
    centre = 4 * 9 + 4
    for y in range(h):
        for x in range(w):
            assert torch.isclose(out[0, centre, y, x], corr[y, x, y, x], atol=1e-5)
            for a in range(9):
                for b in range(9):
                    x2, y2 = x + a - 4, y + b - 4  # channel a*9+b: dx = a-4, dy = b-4
                    want = corr[y, x, y2, x2] if 0 <= x2 < w and 0 <= y2 < h else torch.tensor(0.0)
                    assert torch.isclose(out[0, a * 9 + b, y, x], want, atol=1e-5)
    coarsest = pyr[3].view(h, w)  # the 1x1 level: its centre at p/8 is inside the one pixel
    torch.testing.assert_close(out[0, 3 * 81 + centre], coarsest * (1 - coords_grid(1, h, w)[0] / 8).prod(0))


def test_correlation_peak_sits_at_the_displacement_from_image1_to_image2():
    """RAFT's flow convention: f1(p) = f2(p + d) puts the window's peak at offset d, so the flow p -> p + d."""
    torch.manual_seed(2)
    f1 = torch.randn(1, 64, 12, 12)
    dx, dy = 2, -1
    f2 = torch.roll(f1, shifts=(dy, dx), dims=(2, 3))  # f2(p + d) = f1(p)
    out = lookup(correlation_pyramid(f1, f2), coords_grid(1, 12, 12))[0, :81, 3:9, 3:9]
    assert (out.argmax(0) == (dx + 4) * 9 + (dy + 4)).all()


def test_convex_upsampling_of_a_constant_flow_is_eight_times_it():
    torch.manual_seed(3)
    flow = torch.tensor([1.5, -0.25]).view(1, 2, 1, 1).expand(2, 2, 3, 4).contiguous()
    mask = torch.randn(2, 576, 3, 4)
    up = convex_upsample(flow, mask)
    assert tuple(up.shape) == (2, 2, 24, 32)
    want = 8 * flow[:, :, :1, :1]
    torch.testing.assert_close(up[:, :, 8:16, 8:24], want.expand(2, 2, 8, 16))  # interior: convex weights
    peaked = torch.zeros(2, 9, 64, 3, 4)
    peaked[:, 4] = 50.0  # all weight on each pixel's own coarse value
    torch.testing.assert_close(convex_upsample(flow, peaked.view(2, 576, 3, 4)), want.expand(2, 2, 24, 32))


def test_convex_upsampling_places_sub_pixels_row_major():
    flow = torch.arange(6.0).view(1, 1, 2, 3).repeat(1, 2, 1, 1)
    mask = torch.zeros(1, 9, 8, 8, 2, 3)
    mask[:, 4] = 50.0
    mask[0, 5, 2, 6, 0, 0] = 100.0  # sub-pixel (row 2, col 6) of coarse (0, 0) takes its right neighbour
    up = convex_upsample(flow, mask.view(1, 576, 2, 3))
    got = torch.stack((up[0, 0, 2, 6], up[0, 0, 2, 5], up[0, 0, 8 + 2, 6]))
    torch.testing.assert_close(got, torch.tensor([8 * 1.0, 0.0, 8 * 3.0]))


@pytest.mark.parametrize("size,padded", [((20, 30), (64, 64)), ((67, 90), (72, 96)), ((64, 72), (64, 72))])
def test_padding_to_multiples_of_8_and_cropping_back(size, padded):
    net = RAFT(iters=1).eval()
    seen = []
    net.estimate = lambda a, b, iters: (seen.append(tuple(a.shape[-2:])), a[:, :2] - b[:, 1:])[1]
    img1, img2 = torch.rand(1, 3, *size), torch.rand(1, 3, *size)
    out = net(img1, img2)
    assert seen == [padded]
    torch.testing.assert_close(out, img1[:, :2] - img2[:, 1:])  # the crop inverts the (centred) padding


def test_real_forward_keeps_the_input_size():
    torch.manual_seed(4)
    net = RAFT(iters=2).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 21, 35), torch.rand(2, 3, 21, 35))
    assert tuple(out.shape) == (2, 2, 21, 35) and torch.isfinite(out).all()


class _ShiftStub(nn.Module):
    """Stands in for RAFT with its documented convention: the global integer flow d with image1(p) = image2(p + d)."""

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        best, err = (0, 0), float("inf")
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                moved = torch.roll(image2, (-dy, -dx), (2, 3))  # moved(p) = image2(p + d)
                e = float((image1 - moved)[..., 3:-3, 3:-3].abs().mean())
                if e < err:
                    best, err = (dx, dy), e
        return torch.tensor(best, dtype=image1.dtype).view(1, 2, 1, 1).expand(image1.shape[0], 2, *image1.shape[-2:])


def test_flow_estimator_warps_supp_onto_ref():
    torch.manual_seed(5)
    ref = torch.rand(1, 3, 16, 16)
    supp = torch.roll(ref, shifts=(1, -2), dims=(2, 3))  # content of ref moved down 1, left 2
    flow = flow_estimator(_ShiftStub())(ref, supp)
    assert flow[0, :, 0, 0].tolist() == [-2.0, 1.0]
    torch.testing.assert_close(flow_warp(supp, flow.permute(0, 2, 3, 1))[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3])


@pytest.fixture(scope="module")
def raft_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(6)
    net = RAFT()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("raft") / RAFT_FILE
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from DataParallel
    return path, state


def test_strict_load_round_trip_with_module_prefix(raft_checkpoint):
    path, state = raft_checkpoint
    net = load_raft(path, iters=3)
    assert not net.training and net.iters == 3
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.fault
def test_load_errors_are_one_line(tmp_path: Path, raft_checkpoint):
    _, state = raft_checkpoint
    cases = {}
    cases["missing"] = tmp_path / "absent.pth"
    cases["garbage"] = tmp_path / "garbage.pth"
    cases["garbage"].write_text("not a checkpoint")
    cases["foreign"] = tmp_path / "basicvsr.pth"
    torch.save({"params": {"spynet.mean": torch.zeros(1)}}, cases["foreign"])
    cases["other"] = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, cases["other"])
    cases["shapes"] = tmp_path / "shapes.pth"
    bad = dict(state)
    bad["update_block.flow_head.conv2.weight"] = torch.zeros(3, 256, 3, 3)
    torch.save(bad, cases["shapes"])
    cases["small"] = tmp_path / "small.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("update_block.mask")}, cases["small"])
    messages = {}
    for name, p in cases.items():
        with pytest.raises(VsrqError) as exc:
            load_raft(p)
        messages[name] = str(exc.value)
        assert "\n" not in messages[name]
    assert "not found" in messages["missing"] and "raft-things.pth" in messages["missing"]
    assert "cannot read" in messages["garbage"]
    assert "not a RAFT checkpoint" in messages["foreign"] and "not a RAFT checkpoint" in messages["other"]
    assert "shape mismatch: update_block.flow_head.conv2.weight" in messages["shapes"]
    assert "missing: update_block.mask.0.weight" in messages["small"] and "raft-small" in messages["small"]


def test_raft_flow_resolves_vsrq_weights(monkeypatch, tmp_path: Path, raft_checkpoint):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(VsrqError, match=r"flow 'raft' needs raft-things.pth .* in \$VSRQ_WEIGHTS"):
        raft_flow()
    with pytest.raises(VsrqError, match="unknown flow estimator 'farneback'"):
        named_flow("farneback")
    with pytest.raises(VsrqError, match="unknown flow estimator"):
        as_upscaler(nn.Linear(1, 1), flow="farneback")
    monkeypatch.setenv(WEIGHTS_ENV, str(raft_checkpoint[0].parent))
    frames = torch.rand(2, 3, 12, 20)
    assert tuple(raft_flow()(frames[:1], frames[1:]).shape) == (1, 2, 12, 20)
    cfg = SmallConfig(sampler=SamplerConfig(steps=1, eta=0.0, prediction="v", guidance_scale=1.0, color_fix=False))
    up = as_upscaler(SmallMGLDVSR(cfg), flow="raft")
    assert isinstance(up, SmallUpscaler) and up.flow.__qualname__.startswith("flow_estimator.")  # RAFT's wrapper
