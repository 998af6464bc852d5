"""NIQE: its building blocks against closed forms, the whole metric against BasicSR's implementation (which
matches the authors' MATLAB release), and its known behaviour on real frames."""

from __future__ import annotations

import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from vsrq.data.degrade import degrade, imresize, modcrop
from vsrq.data.frames import list_frames, read_frame
from vsrq.errors import VsrqError
from vsrq.metrics.niqe import aggd_fit, mscn, niqe, pristine_model

ROOT = Path(__file__).resolve().parents[1]
BASICSR_SDIST = ROOT / ".venv" / "share" / "vsrq-reference" / "basicsr-1.4.2.tar.gz"


def test_mscn_of_a_flat_image_is_zero_and_an_interior_pixel_matches_its_definition():
    _, _, window = pristine_model()
    assert window.shape == (7, 7) and window.sum() == pytest.approx(1.0)
    assert np.allclose(mscn(np.full((20, 24), 77.0), window), 0.0)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (20, 24))
    patch = img[10 - 3 : 10 + 4, 12 - 3 : 12 + 4]
    mu = (patch * window).sum()
    sigma = np.sqrt(abs((patch**2 * window).sum() - mu**2))
    assert mscn(img, window)[10, 12] == pytest.approx((img[10, 12] - mu) / (sigma + 1), rel=1e-10)


@pytest.mark.parametrize("shape, draw, beta", [
    (2.0, lambda rng, n: rng.normal(0, 1.5, n), 1.5 * np.sqrt(2)),  # exp(-(x/b)^2): b = sqrt(2) sigma
    (1.0, lambda rng, n: rng.laplace(0, 0.7, n), 0.7),  # exp(-|x|/b)
])
def test_generalized_gaussian_fit_recovers_shape_and_spread(shape: float, draw, beta: float):
    x = draw(np.random.default_rng(1), 400_000)
    alpha, bl, br = aggd_fit(x)
    assert alpha == pytest.approx(shape, abs=0.03)
    assert bl == pytest.approx(beta, rel=0.02) and br == pytest.approx(beta, rel=0.02)


def test_asymmetric_fit_keeps_the_ratio_of_the_two_sides():
    # an AGGD of shape 2 with beta_l = 3 beta_r: each side a half-normal, the left holding 3/4 of the mass
    rng = np.random.default_rng(2)
    x = np.concatenate([-3.0 * np.abs(rng.normal(0, 1, 300_000)), np.abs(rng.normal(0, 1, 100_000))])
    alpha, bl, br = aggd_fit(x)
    assert alpha == pytest.approx(2.0, abs=0.05) and bl / br == pytest.approx(3.0, rel=0.02)


def _vid4_frames(root: Path) -> list[np.ndarray]:
    return [modcrop(read_frame(list_frames(root / clip)[0])) for clip in ("calendar", "city")]


@pytest.fixture(scope="module")
def basicsr_niqe(tmp_path_factory: pytest.TempPathFactory):
    """BasicSR 1.4.2's ``calculate_niqe``, run from its source distribution (kept by ``scripts/setup.sh``) with
    its own helper modules; only the imports it needs for a Y-channel score and cannot have here (cv2, the
    registry) are stood in."""
    if not BASICSR_SDIST.is_file():
        pytest.skip(f"{BASICSR_SDIST} absent (scripts/setup.sh fetches it)")
    pytest.importorskip("scipy.ndimage")
    folder = tmp_path_factory.mktemp("basicsr")
    with tarfile.open(BASICSR_SDIST) as tar:
        for name in ("metrics/niqe.py", "metrics/niqe_pris_params.npz", "metrics/metric_util.py",
                     "utils/matlab_functions.py", "utils/color_util.py"):
            member = tar.getmember(f"basicsr-1.4.2/basicsr/{name}")
            (folder / Path(name).name).write_bytes(tar.extractfile(member).read())
    saved = {k: sys.modules.get(k) for k in ("cv2", "basicsr", "basicsr.utils", "basicsr.utils.registry",
                                             "basicsr.utils.matlab_functions", "basicsr.metrics",
                                             "basicsr.metrics.metric_util", "scipy.ndimage.filters")}
    import importlib.util

    import scipy.ndimage

    def load(name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    try:
        sys.modules["cv2"] = types.ModuleType("cv2")
        sys.modules["scipy.ndimage.filters"] = scipy.ndimage  # the alias BasicSR imports convolve from
        for pkg in ("basicsr", "basicsr.metrics"):
            sys.modules[pkg] = types.ModuleType(pkg)
        utils = sys.modules["basicsr.utils"] = types.ModuleType("basicsr.utils")
        registry = sys.modules["basicsr.utils.registry"] = types.ModuleType("basicsr.utils.registry")
        registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: (lambda f: f))
        utils.bgr2ycbcr = load("basicsr_color_util", folder / "color_util.py").bgr2ycbcr
        load("basicsr.utils.matlab_functions", folder / "matlab_functions.py")
        load("basicsr.metrics.metric_util", folder / "metric_util.py")
        module = load("basicsr_niqe", folder / "niqe.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.calculate_niqe


def test_niqe_matches_basicsr_on_real_frames(vid4_root: Path, basicsr_niqe):
    for frame in _vid4_frames(vid4_root):
        ours = niqe(frame)
        reference = basicsr_niqe(frame[..., ::-1].astype(np.float64), crop_border=0)  # BasicSR reads BGR
        # BasicSR resizes the half-scale image in float32, vsrq in float64: agreement to 2e-4, not to the last bit
        assert ours == pytest.approx(reference, rel=2e-4), (ours, reference)


def test_niqe_scores_natural_frames_as_natural_and_blur_as_less_so(vid4_root: Path):
    for frame in _vid4_frames(vid4_root):
        sharp = niqe(frame)
        blurred = imresize(degrade(frame, "bi"), 4.0)  # bicubic x4 of the BI x1/4 frame
        assert 2.0 < sharp < 10.0, sharp
        assert niqe(blurred) > sharp + 1.0


@pytest.mark.fault
def test_bad_images_are_one_clear_error():
    with pytest.raises(VsrqError, match="8-bit RGB or grey"):
        niqe(np.zeros((200, 200, 3), dtype=np.uint16))
    with pytest.raises(VsrqError, match="at least two whole 96x96 blocks"):
        niqe(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8))
