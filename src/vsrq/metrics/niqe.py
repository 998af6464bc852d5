"""NIQE (Mittal et al. 2013): a no-reference quality score, lower is more natural; no learned weights.

The image's luma (MATLAB's Y, rounded) is cut into whole 96x96 blocks (the remainder dropped). At two scales
(the image, then MATLAB's bicubic x1/2 of it), each block's mean-subtracted contrast-normalized (MSCN)
coefficients ``(I - mu) / (sigma + 1)`` (mu, sigma: local moments under a 7x7 Gaussian, replicated borders)
give 18 features: a generalized Gaussian fit of the coefficients (shape, mean spread) and an asymmetric one
of their products with the right, lower and two diagonal neighbours (shape, mean, left and right spreads),
all by moment matching over a shape grid 0.2:0.001:10. A multivariate Gaussian fitted to the blocks'
36 features is compared with the published model of pristine images (``data/niqe_pris_params.npz``, see
``data/NOTICE.md``): ``sqrt((mu_p - mu)^T ((S_p + S)/2)^+ (mu_p - mu))``. This is the algorithm of the
authors' MATLAB release, which BasicSR reproduces (5.7296 on Set14's baboon); typical natural images score
about 3 to 8.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.data.degrade import imresize
from vsrq.errors import VsrqError
from vsrq.metrics.psnr_ssim import rgb_to_y

PARAMS = Path(__file__).with_name("data") / "niqe_pris_params.npz"
PARAMS_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
BLOCK = 96
SHAPES = np.arange(0.2, 10.001, 0.001)  # the shape grid of the moment matching
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # np.roll shifts: horizontal, vertical, the two diagonals


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36, 7x7 Gaussian window) of the published pristine model, checked by hash."""
    data = PARAMS.read_bytes()
    if hashlib.sha256(data).hexdigest() != PARAMS_SHA256:
        raise VsrqError(f"{PARAMS}: not the published NIQE model (hash differs); reinstall vsrq")
    with np.load(PARAMS, allow_pickle=False) as params:
        return params["mu_pris_param"].reshape(-1), params["cov_pris_param"], params["gaussian_window"]


def _local_mean(img: np.ndarray, window: np.ndarray, border: str) -> np.ndarray:
    """The window-weighted mean around every pixel (the window is symmetric); ``border`` is "replicate"
    (MATLAB's imfilter 'replicate', NIQE) or "constant" (filter2 'same', zeros outside: BRISQUE)."""
    r = window.shape[0] // 2
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))[None, None]
    x = F.pad(x, (r, r, r, r), mode=border)
    return F.conv2d(x, torch.from_numpy(window.astype(np.float64))[None, None])[0, 0].numpy()


def mscn(img: np.ndarray, window: np.ndarray, border: str = "replicate") -> np.ndarray:
    """Mean-subtracted contrast-normalized coefficients of a grey image (float, 0..255 scale)."""
    mu = _local_mean(img, window, border)
    sigma = np.sqrt(np.abs(_local_mean(img * img, window, border) - mu * mu))
    return (img - mu) / (sigma + 1.0)


@lru_cache(maxsize=1)
def shape_ratios() -> np.ndarray:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) over the shape grid: E|x|^2 / E[x^2] of a GGD of shape a."""
    g = torch.from_numpy(1.0 / SHAPES)
    return torch.exp(2 * torch.lgamma(2 * g) - torch.lgamma(g) - torch.lgamma(3 * g)).numpy()


def aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """(shape alpha, left spread beta_l, right spread beta_r) of an asymmetric generalized Gaussian, by moment
    matching; a symmetric sample gives beta_l = beta_r (a GGD)."""
    x = x.reshape(-1)
    left, right = x[x < 0], x[x > 0]
    if left.size == 0 or right.size == 0:
        raise VsrqError("NIQE: a block without both signs of coefficients (a flat image region)")
    left_std, right_std = np.sqrt(np.mean(left**2)), np.sqrt(np.mean(right**2))
    g = left_std / right_std
    r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = float(SHAPES[np.argmin((shape_ratios() - r_norm) ** 2)])
    spread = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
    return alpha, float(left_std * spread), float(right_std * spread)


def block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one block of MSCN coefficients."""
    alpha, bl, br = aggd_fit(block)
    feats = [alpha, (bl + br) / 2]
    for shift in NEIGHBOURS:
        alpha, bl, br = aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * math.gamma(2 / alpha) / math.gamma(1 / alpha)
        feats += [alpha, mean, bl, br]
    return feats


def niqe_gray(img: np.ndarray) -> float:
    """NIQE of a grey image on the 0..255 scale (float), at least two whole 96x96 blocks."""
    mu_p, cov_p, window = pristine_model()
    bh, bw = img.shape[0] // BLOCK, img.shape[1] // BLOCK
    if bh * bw < 2:
        raise VsrqError(f"NIQE needs at least two whole {BLOCK}x{BLOCK} blocks; the image is {img.shape[1]}x"
                        f"{img.shape[0]}")
    img = img[: bh * BLOCK, : bw * BLOCK].astype(np.float64)
    scales = []
    for scale in (1, 2):
        coeffs = mscn(img, window)
        size = BLOCK // scale
        scales.append(np.array([block_features(coeffs[i * size : (i + 1) * size, j * size : (j + 1) * size])
                                for j in range(bw) for i in range(bh)]))
        if scale == 1:
            img = imresize(img, 0.5)
    feats = np.concatenate(scales, axis=1)
    mu = np.nanmean(feats, axis=0)
    cov = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    d = mu_p - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))


def niqe(img: np.ndarray, crop: int = 0) -> float:
    """NIQE of an RGB ``(H, W, 3)`` or grey ``(H, W)`` uint8 image: MATLAB's Y of RGB, rounded, ``crop``
    pixels cut from each border first."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise VsrqError(f"NIQE takes an 8-bit RGB or grey image, not {img.dtype} of shape {img.shape}")
    y = rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64)
    if crop:
        y = y[crop:-crop, crop:-crop]
    return niqe_gray(np.round(y))
