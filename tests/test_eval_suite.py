"""The evaluation suite: LPIPS / DISTS on torchvision-layout weights against hand-written forwards, E*warp's
occlusion and warping against closed forms, tLP / tdiff, local weights, no-GT and bad input, PNG reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import smooth_frames, write_clip
from vsrq.cli import main
from vsrq.data.frames import read_frame
from vsrq.errors import VsrqError
from vsrq.metrics import perceptual
from vsrq.metrics.perceptual import DISTS, LPIPS, MissingWeights, load_features, local_file
from vsrq.metrics.report import evaluate_paths, score_clip
from vsrq.metrics.suite import Suite, build_suite, parse_metrics
from vsrq.metrics.temporal import EstarWarpMeter, estar_occlusion, estar_pair, estar_prepare, resample
from vsrq.models.weights import package_dir

# torchvision's conv layers of alexnet().features and vgg16().features: index -> (out, in, k)
ALEX = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG = {i: (o, c, 3) for i, (o, c) in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
                                         ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
                                          (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)))}


def random_state(convs: dict[int, tuple[int, int, int]], seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-layout classifier state dict (He-scaled random weights), with a classifier key to ignore."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (o, c, k) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(o, c, k, k, generator=g) * math.sqrt(2 / (c * k * k))
        state[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$VSRQ_WEIGHTS holding random-weight backbones under the official file names."""
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(random_state(ALEX, 1), folder / perceptual.ALEXNET_FILE)
    torch.save(random_state(VGG, 2), folder / perceptual.VGG16_FILE)
    monkeypatch.setenv("VSRQ_WEIGHTS", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    perceptual.official_lpips.cache_clear()
    perceptual.official_dists.cache_clear()
    yield folder
    perceptual.official_lpips.cache_clear()
    perceptual.official_dists.cache_clear()


def _conv(x: torch.Tensor, state: dict, i: int, pad: int, stride: int = 1) -> torch.Tensor:
    return F.relu(F.conv2d(x, state[f"features.{i}.weight"].double(), state[f"features.{i}.bias"].double(),
                           stride=stride, padding=pad))


def lpips_reference(state: dict, lins: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, net: str) -> float:
    """LPIPS written out layer by layer in float64 from the paper's definition (inputs in [-1, 1])."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(z: torch.Tensor) -> list[torch.Tensor]:
        h = (z.double() - shift) / scale
        if net == "alex":
            h1 = _conv(h, state, 0, 2, 4)
            h2 = _conv(F.max_pool2d(h1, 3, 2), state, 3, 2)
            h3 = _conv(F.max_pool2d(h2, 3, 2), state, 6, 1)
            h4 = _conv(h3, state, 8, 1)
            return [h1, h2, h3, h4, _conv(h4, state, 10, 1)]
        out, blocks = [], ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
        for b, block in enumerate(blocks):
            if b:
                h = F.max_pool2d(h, 2, 2)
            for i in block:
                h = _conv(h, state, i, 1)
            out.append(h)
        return out

    total = 0.0
    for fx, fy, w in zip(taps(x), taps(y), lins):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += float(((nx - ny) ** 2 * w.double().view(1, -1, 1, 1)).sum(1).mean())
    return total


def dists_reference(state: dict, alpha: torch.Tensor, beta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """DISTS written out in float64: VGG16 with L2 pooling done tap by tap, then the two similarity terms."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    hann = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    g = torch.outer(hann, hann) / 4.0

    def l2pool(h: torch.Tensor) -> torch.Tensor:
        sq = F.pad(h ** 2, (1, 1, 1, 1))
        ho, wo = (h.shape[2] - 1) // 2 + 1, (h.shape[3] - 1) // 2 + 1
        acc = sum(g[i, j] * sq[:, :, i: i + 2 * ho: 2, j: j + 2 * wo: 2] for i in range(3) for j in range(3))
        return (acc + 1e-12).sqrt()

    def stages(z: torch.Tensor) -> list[torch.Tensor]:
        out, h = [z.double()], (z.double() - mean) / std
        for b, block in enumerate(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))):
            if b:
                h = l2pool(h)
            for i in block:
                h = _conv(h, state, i, 1)
            out.append(h)
        return out

    a, b = alpha.double().flatten(), beta.double().flatten()
    total, offset, c = 0.0, 0, 1e-6
    wsum = a.sum() + b.sum()
    for fx, fy in zip(stages(x), stages(y)):
        n = fx.shape[1]
        mx, my = fx.mean((2, 3)), fy.mean((2, 3))
        vx, vy = fx.var((2, 3), unbiased=False), fy.var((2, 3), unbiased=False)
        cov = (fx * fy).mean((2, 3)) - mx * my
        s1 = (2 * mx * my + c) / (mx ** 2 + my ** 2 + c)
        s2 = (2 * cov + c) / (vx + vy + c)
        total += float(((a[offset: offset + n] * s1).sum() + (b[offset: offset + n] * s2).sum()) / wsum)
        offset += n
    return 1.0 - total


def images(seed: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, side, side, generator=g)
    return x, (x + 0.2 * torch.randn(1, 3, side, side, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("net, convs, side", [("alex", ALEX, 64), ("vgg", VGG, 48)])
def test_lpips_on_torchvision_layout_matches_a_hand_written_forward(net: str, convs: dict, side: int, tmp_path: Path):
    state = random_state(convs, 3)
    torch.save(state, tmp_path / "backbone.pth")
    model = LPIPS(net)
    load_features(model.features, tmp_path / "backbone.pth", net)
    g = torch.Generator().manual_seed(4)
    lins = [torch.rand(1, lin.weight.shape[1], 1, 1, generator=g) for lin in model.lins]
    torch.save({f"lin{k}.model.1.weight": w for k, w in enumerate(lins)}, tmp_path / "heads.pth")
    model.load_heads(tmp_path / "heads.pth")
    x, y = images(5, side)
    got = float(model(2 * x - 1, 2 * y - 1)[0])
    assert got == pytest.approx(lpips_reference(state, [w.flatten() for w in lins], 2 * x - 1, 2 * y - 1, net), rel=1e-4)
    assert got > 0 and float(model(2 * y - 1, 2 * x - 1)[0]) == pytest.approx(got, rel=1e-6)  # symmetric
    assert float(model(2 * x - 1, 2 * x - 1)[0]) == 0.0  # identical inputs


def test_dists_on_torchvision_layout_matches_a_hand_written_forward(tmp_path: Path):
    state = random_state(VGG, 6)
    torch.save(state, tmp_path / "vgg.pth")
    model = DISTS()
    load_features(model.features, tmp_path / "vgg.pth", "VGG16")
    g = torch.Generator().manual_seed(7)
    alpha, beta = torch.rand(1, 1475, 1, 1, generator=g), torch.rand(1, 1475, 1, 1, generator=g)
    torch.save({"alpha": alpha, "beta": beta}, tmp_path / "weights.pt")
    model.load_heads(tmp_path / "weights.pt")
    x, y = images(8, 40)
    got = float(model(x, y)[0])
    assert got == pytest.approx(dists_reference(state, alpha, beta, x, y), rel=1e-4, abs=1e-6)
    assert 0 < got < 1 and float(model(y, x)[0]) == pytest.approx(got, rel=1e-5)
    assert abs(float(model(x, x)[0])) < 1e-6


def test_official_heads_from_the_wheels_have_the_published_shapes_and_signs():
    """LPIPS's linear layers are non-negative by construction (the paper clamps them); DISTS's weights too."""
    lpips_dir, dists_dir = package_dir("lpips"), package_dir("DISTS_pytorch")
    if lpips_dir is None or dists_dir is None:
        pytest.skip("lpips / dists-pytorch wheels not installed (scripts/setup.sh installs them --no-deps)")
    for net in ("alex", "vgg"):
        model = LPIPS(net)
        model.load_heads(lpips_dir / "weights" / "v0.1" / f"{net}.pth")
        assert all(float(lin.weight.min()) >= 0 and float(lin.weight.sum()) > 0 for lin in model.lins)
    model = DISTS()
    model.load_heads(dists_dir / "weights.pt")
    assert float(model.alpha.min()) >= 0 and float(model.beta.min()) >= 0
    assert float(model.alpha.sum() + model.beta.sum()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.fault
def test_wrong_network_truncated_file_and_wrong_heads_are_one_clear_error(tmp_path: Path):
    torch.save(random_state(VGG, 1), tmp_path / "vgg.pth")
    with pytest.raises(VsrqError, match="is not torchvision's AlexNet .*shape features.0.weight"):
        load_features(LPIPS("alex").features, tmp_path / "vgg.pth", "AlexNet")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "vgg.pth").read_bytes()[:5000])
    with pytest.raises(VsrqError, match="cannot read as a PyTorch checkpoint"):
        load_features(LPIPS("vgg").features, tmp_path / "cut.pth", "VGG16")
    torch.save({"alpha": torch.ones(1, 10, 1, 1), "beta": torch.ones(1, 1475, 1, 1)}, tmp_path / "w.pt")
    with pytest.raises(VsrqError, match=r"not DISTS weights \(alpha \(1, 10, 1, 1\)"):
        DISTS().load_heads(tmp_path / "w.pt")


def test_local_weights_come_from_vsrq_weights_then_torch_home_and_a_missing_file_names_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "a.pth").write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("VSRQ_WEIGHTS", raising=False)
    assert local_file("a.pth", "src") == hub / "a.pth"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.pth").write_bytes(b"y")
    monkeypatch.setenv("VSRQ_WEIGHTS", str(tmp_path / "mine"))
    assert local_file("a.pth", "src") == tmp_path / "mine" / "a.pth"
    with pytest.raises(MissingWeights, match=r"needs b\.pth in .*mine or .*checkpoints \(get it here\)"):
        local_file("b.pth", "get it here")


def test_suite_reports_metrics_without_weights_as_unavailable_with_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VSRQ_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    perceptual.official_lpips.cache_clear()
    perceptual.official_dists.cache_clear()
    suite = build_suite(parse_metrics("psnr,lpips-vgg,dists,tdiff"))
    assert suite.names == ["psnr", "tdiff"]
    assert "vgg16-397923af.pth" in suite.unavailable["lpips_vgg"] and "download.pytorch.org" in suite.unavailable["dists"]
    with pytest.raises(VsrqError, match="unknown metric 'fid'"):
        parse_metrics("psnr,fid")
    assert parse_metrics("all")[:2] == ["psnr", "ssim"] and len(parse_metrics("all")) == 12


# --- E*warp (QuantVSR's ewarp.py) ---------------------------------------------------------------------

def test_estar_known_translation_has_zero_error_away_from_the_border():
    """Frame t+1 is frame t moved by d = (3, 2) px and the flow is exact (t -> t+1: +d, back: -d): warping
    frame t+1 back is exact wherever p + d stays inside; the bottom / right strip, sampled at the clamped
    edge, is the only error, computed here by hand."""
    rng = np.random.default_rng(0)
    h, w, dx, dy = 24, 32, 3, 2
    img1, img2 = rng.random((3, h, w)), rng.random((3, h, w))
    img2[:, dy:, dx:] = img1[:, : h - dy, : w - dx]  # img2(p + d) = img1(p)
    a, b = torch.from_numpy(img1[None]), torch.from_numpy(img2[None])
    fw = torch.zeros(1, 2, h, w, dtype=torch.float64)
    fw[:, 0], fw[:, 1] = dx, dy
    bw = -fw
    assert not estar_occlusion(fw, bw).any()  # consistent and constant: nothing occluded, no motion boundary
    err = ((resample(b, fw) - a) ** 2)[0].sum(0).numpy()
    assert np.abs(err[: h - dy, : w - dx]).max() < 1e-24
    ys, xs = np.clip(np.arange(h) + dy, 0, h - 1), np.clip(np.arange(w) + dx, 0, w - 1)
    by_hand = ((img2[:, ys][:, :, xs] - img1) ** 2).sum() / (h * w)
    assert by_hand > 0 and estar_pair(a, b, fw, bw) == pytest.approx(by_hand, rel=1e-12)


def test_estar_occlusion_by_inconsistency_and_by_motion_boundary():
    h, w = 8, 16
    fw = torch.zeros(1, 2, h, w, dtype=torch.float64)
    fw[:, 0] = 5.0
    assert estar_occlusion(fw, torch.zeros_like(fw)).all()  # |5|^2 = 25 > 0.01 * 25 + 0.5 everywhere
    x = torch.rand(1, 3, h, w, dtype=torch.float64)
    assert estar_pair(x, x + 1, fw, torch.zeros_like(fw)) == 0.0  # nothing left: 0 over all pixels x 3
    step = torch.zeros(1, 2, h, w, dtype=torch.float64)
    step[:, 0, :, 10:] = 3.0  # columns 10.. move 3 px right; bw undoes it where they land (13..)
    back = torch.zeros_like(step)
    back[:, 0, :, 13:] = -3.0
    occ = estar_occlusion(step, back)[0]
    assert occ[:, 9].all() and not occ[:, :9].any() and not occ[:, 10:].any()  # |grad|^2 = 9 only at column 9


def test_estar_prepare_halves_by_block_average_and_pads_like_raft():
    frame = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    x = estar_prepare(frame)
    assert x.shape == (1, 3, 24, 32)  # 20 x 26 padded to multiples of 8: (2, 2) rows, (3, 3) columns
    half = frame.astype(np.float64).reshape(20, 2, 26, 2, 3).mean((1, 3)) / 255
    inner = x[0, :, 2:22, 3:29].permute(1, 2, 0).double().numpy()
    assert np.abs(inner - half).max() < 1e-6
    assert torch.equal(x[0, :, 0], x[0, :, 2]) and torch.equal(x[0, :, :, 31], x[0, :, :, 28])  # replicated


def test_estar_meter_feeds_the_flow_quantvsr_s_input_range_and_averages_pairs():
    frames = smooth_frames(3, 80, 96)
    seen = []

    def flow(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        seen.append(float(torch.cat([ref, supp]).max()))
        return ref.new_zeros(ref.shape[0], 2, *ref.shape[2:])

    meter = EstarWarpMeter(flow, input_scale=1 / 255)
    values = [meter.add(f) for f in frames]
    assert values[0] is None and max(seen) <= 1 / 255 + 1e-9
    zero = torch.zeros(1, 2, 40, 48)
    for t in (1, 2):
        expected = estar_pair(estar_prepare(frames[t - 1]), estar_prepare(frames[t]), zero, zero) * 1e3
        assert values[t] == pytest.approx(expected, rel=1e-6)


# --- tLP, tdiff, the CLI -----------------------------------------------------------------------------

def test_tdiff_and_tlp_closed_forms(weights_dir: Path):
    gt = np.repeat(smooth_frames(1, 64, 64), 4, axis=0)
    flicker = gt.copy()
    flicker[1::2] = np.clip(flicker[1::2].astype(int) + 6, 0, 255).astype(np.uint8)
    suite = build_suite(["tdiff", "tlp"])
    clip = score_clip("c", list(flicker), list(gt), y=False, crop=0, suite=suite)
    assert clip.values["tdiff"][0] is None and clip.values["tdiff"][1:] == pytest.approx([6.0] * 3, abs=0.05)
    alex = perceptual.official_lpips("alex")

    def lp(a: np.ndarray, b: np.ndarray) -> float:
        ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].float() / 255 * 2 - 1 for v in (a, b))
        return float(alex(ta, tb)[0])

    assert clip.values["tlp"][1] == pytest.approx(100 * abs(lp(flicker[1], flicker[0]) - lp(gt[1], gt[0])), rel=1e-5)
    assert clip.values["tlp"][1] > 0
    same = score_clip("c", list(gt), list(gt), y=False, crop=0, suite=suite)
    assert same.values["tlp"][1:] == [0.0] * 3 and same.values["tdiff"][1:] == [0.0] * 3


def test_cli_scores_perceptual_metrics_from_local_weights_and_lists_what_is_missing(
        weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    gt = smooth_frames(2, 72, 80)
    pred = np.clip(gt.astype(int) + np.random.default_rng(0).integers(-9, 10, gt.shape), 0, 255).astype(np.uint8)
    write_clip(tmp_path / "gt", gt)
    write_clip(tmp_path / "pred", pred)
    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--metrics", "psnr,lpips,lpips-vgg,dists,ewarp",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert "raft-things.pth" in data["unavailable"]["ewarp (RAFT)"] and "E*warp (SpyNet)" in text
    assert data["metrics"]["ewarp"]["label"] == "E*warp (SpyNet)"
    vgg = perceptual.official_lpips("vgg")
    t = [torch.from_numpy(v).permute(2, 0, 1)[None].float() / 255 for v in (pred[1], gt[1])]
    assert data["clips"][0]["frames"]["lpips_vgg"][1] == pytest.approx(float(vgg(2 * t[0] - 1, 2 * t[1] - 1)[0]), rel=1e-5)
    assert data["clips"][0]["frames"]["dists"][1] == pytest.approx(float(perceptual.official_dists()(*t)[0]), rel=1e-5)
    assert data["mean"]["lpips"] > 0 and data["clips"][0]["frames"]["ewarp"][0] is None


def test_no_reference_metrics_need_no_ground_truth_and_full_reference_ones_say_so(tmp_path: Path, capsys):
    frames = np.stack([np.asarray(Image.fromarray(f).resize((200, 200))) for f in smooth_frames(2, 100, 100)])
    write_clip(tmp_path / "pred", frames)
    assert main(["eval", str(tmp_path / "pred"), "--metrics", "niqe", "--json", str(tmp_path / "n.json")]) == 0
    data = json.loads((tmp_path / "n.json").read_text())
    assert len(data["clips"][0]["frames"]["niqe"]) == 2 and data["mean"]["niqe"] > 0
    assert main(["eval", str(tmp_path / "pred"), "--metrics", "psnr,niqe"]) == 2
    assert "psnr need ground truth" in capsys.readouterr().err


@pytest.mark.fault
def test_bad_input_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    gt = smooth_frames(3, 40, 40)
    write_clip(tmp_path / "gt", gt)
    write_clip(tmp_path / "short", gt[:2])
    write_clip(tmp_path / "one", gt[:1])
    write_clip(tmp_path / "gt1", gt[:1])
    write_clip(tmp_path / "big", np.zeros((3, 40, 48, 3), np.uint8))
    cases = [(["short", "gt"], "2 predicted frames, 3 ground-truth frames"),
             (["big", "gt"], "prediction is 48x40, ground truth 40x40"),
             (["one", "gt1", "--metrics", "tdiff"], "tdiff score consecutive frames; clip - has one frame"),
             (["one", "gt1", "--metrics", "psnr,nope"], "unknown metric 'nope'"),
             (["one", "gt1", "--compare", "x"], "--compare expects LABEL=DIR"),
             (["one", "gt1", "--report", str(tmp_path / "r"), "--compare", f"one={tmp_path / 'gt1'}"],
              "--compare labels must differ")]
    for argv, message in cases:
        assert main(["eval", *[str(tmp_path / a) if i < 2 else a for i, a in enumerate(argv)]]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_grey_and_16_bit_frames_are_converted_as_documented(tmp_path: Path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    assert np.array_equal(read_frame(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    v = np.arange(256, dtype=np.int64).reshape(16, 16)
    wide = (v * 257 + 100 * (v < 255)).astype(np.uint16)  # 8-bit v as 257 v + 100 (65535 for 255)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    assert np.array_equal(read_frame(tmp_path / "w.png")[..., 0], grey)  # round((257 v + 100) / 257) = v


def test_report_writes_pngs_of_the_stated_size_that_change_with_the_inputs(tmp_path: Path, capsys):
    plt = pytest.importorskip("matplotlib.pyplot")
    gt = smooth_frames(4, 48, 64)
    worse = np.clip(gt.astype(int) + np.random.default_rng(0).integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
    for name, frames in (("gt", gt), ("fp", gt), ("q", worse)):
        write_clip(tmp_path / name / "clip", frames)
    argv = ["eval", str(tmp_path / "fp"), str(tmp_path / "gt"), "--y", "--metrics", "psnr,ssim,tdiff"]
    assert main([*argv, "--report", str(tmp_path / "same"), "--compare", f"copy={tmp_path / 'fp'}"]) == 0
    assert main([*argv, "--report", str(tmp_path / "diff"), "--compare", f"q={tmp_path / 'q'}"]) == 0
    assert main([*argv, "--report", str(tmp_path / "diff"), "--compare", f"q={tmp_path / 'q'}"]) == 2  # exists
    assert "exists; pass --overwrite" in capsys.readouterr().err
    for folder in ("same", "diff"):
        index = (tmp_path / folder / "index.md").read_text()
        pngs = sorted(p.name for p in (tmp_path / folder).glob("*.png"))
        assert pngs == ["crop_00.png", "profile_00.png", "psnr_per_frame.png"]
        assert all(f"]({p})" in index for p in pngs)
    profile = {f: plt.imread(tmp_path / f / "profile_00.png") for f in ("same", "diff")}
    assert profile["same"].shape[:2] == (360, 3 * 360)  # ground truth and two predictions, 3.6 in each at 100 dpi
    assert profile["same"].shape == profile["diff"].shape and not np.array_equal(profile["same"], profile["diff"])
    crops = {f: plt.imread(tmp_path / f / "crop_00.png") for f in ("same", "diff")}
    assert not np.array_equal(crops["same"], crops["diff"])
    assert "| q |" not in (tmp_path / "same" / "index.md").read_text() and "## q" in (tmp_path / "diff" / "index.md").read_text()
