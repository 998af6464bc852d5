"""PSNR/SSIM against closed forms and scikit-image; the report's averaging convention."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smooth_frames, write_clip
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import psnr, rgb_to_y, ssim
from vsrq.metrics.report import evaluate_paths

skimage_metrics = pytest.importorskip("skimage.metrics")


def test_psnr_closed_form():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    b = a + np.uint8(5)
    assert math.isclose(psnr(a, b), 20 * math.log10(255 / 5))
    assert psnr(a, a) == math.inf


def test_y_channel_uses_matlab_bt601():
    white = np.full((1, 1, 3), 255, dtype=np.uint8)
    black = np.zeros((1, 1, 3), dtype=np.uint8)
    assert math.isclose(float(rgb_to_y(white)[0, 0]), 235.0, rel_tol=1e-12)
    assert float(rgb_to_y(black)[0, 0]) == 16.0
    # a pure-red offset of d changes Y by 65.481/255 d
    a = np.full((4, 4, 3), 50, dtype=np.uint8)
    b = a.copy()
    b[..., 0] += 10
    assert math.isclose(psnr(a, b, y=True), 20 * math.log10(255 / (65.481 / 255 * 10)))


def test_crop_border_ignores_the_border():
    a = np.zeros((20, 20, 3), dtype=np.uint8)
    b = a.copy()
    b[:2] = 255
    assert psnr(a, b, crop=2) == math.inf


def test_ssim_matches_scikit_image_on_rgb_and_y():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (50, 61, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    ref_rgb = skimage_metrics.structural_similarity(a.astype(float), b.astype(float), channel_axis=2, **kw)
    ref_y = skimage_metrics.structural_similarity(rgb_to_y(a), rgb_to_y(b), **kw)
    assert math.isclose(ssim(a, b), ref_rgb, rel_tol=1e-10)
    assert math.isclose(ssim(a, b, y=True), ref_y, rel_tol=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)


@pytest.mark.fault
def test_shape_mismatch_is_one_clear_error():
    with pytest.raises(VsrqError, match="prediction is 8x8, ground truth 8x9"):
        psnr(np.zeros((8, 8, 3)), np.zeros((9, 8, 3)))


def test_report_mean_is_mean_of_clip_means(tmp_path: Path):
    gt = smooth_frames(4, 24, 24)
    pred = gt.copy()
    pred[0] = np.clip(pred[0].astype(int) + 8, 0, 255).astype(np.uint8)  # clip a: one bad frame of 4
    write_clip(tmp_path / "gt" / "a", gt)
    write_clip(tmp_path / "pred" / "a", pred)
    noisy = np.clip(gt[:2].astype(int) + 3, 0, 255).astype(np.uint8)  # clip b: 2 frames, both off
    write_clip(tmp_path / "gt" / "b", gt[:2])
    write_clip(tmp_path / "pred" / "b", noisy)
    report = evaluate_paths(tmp_path / "pred", tmp_path / "gt", show_progress=False)
    per_clip = [c.mean_psnr for c in report.clips]
    assert [c.name for c in report.clips] == ["a", "b"]
    assert math.isinf(per_clip[0])  # three identical frames make the clip mean infinite
    finite = evaluate_paths(tmp_path / "pred" / "b", tmp_path / "gt" / "b", show_progress=False)
    expected_b = np.mean([psnr(p, g) for p, g in zip(noisy, gt[:2])])
    assert math.isclose(finite.mean_psnr, expected_b)
    report.write_json(tmp_path / "r.json")
    report.write_csv(tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["clips"][0]["frames"]["psnr"]) == 4
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "clip,frame,psnr,ssim"


@pytest.mark.fault
def test_frame_count_mismatch_is_an_error(tmp_path: Path):
    gt = smooth_frames(3, 16, 16)
    write_clip(tmp_path / "gt", gt)
    write_clip(tmp_path / "pred", gt[:2])
    with pytest.raises(VsrqError, match="2 predicted frames, 3 ground-truth frames"):
        evaluate_paths(tmp_path / "pred", tmp_path / "gt", show_progress=False)
