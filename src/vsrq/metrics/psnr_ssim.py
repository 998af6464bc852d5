"""PSNR and SSIM with BasicSR's conventions (``calculate_psnr`` / ``calculate_ssim``).

Inputs are RGB frames on the 0..255 scale. ``y=True`` evaluates the BT.601 luma with MATLAB's
coefficients (Y in [16, 235]), the convention of Vimeo-90K-T, Vid4 and UDM10 tables; REDS4 is
reported on RGB. Everything is computed in float64; SSIM uses the 11x11 Gaussian window
(sigma 1.5) over the valid region, averaged over channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.errors import VsrqError

# MATLAB rgb2ycbcr luma row, for RGB in [0, 1]; output offset 16 on the 0..255 scale.
Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma on the 0..255 scale from an RGB (H, W, 3) image on the 0..255 scale, float64."""
    return img.astype(np.float64) @ Y_COEFFS / 255.0 + 16.0


def _prepare(pred: np.ndarray, gt: np.ndarray, crop: int, y: bool) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != gt.shape:
        raise VsrqError(f"prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth {gt.shape[1]}x{gt.shape[0]}")
    if crop:
        pred, gt = pred[crop:-crop, crop:-crop], gt[crop:-crop, crop:-crop]
    if y:
        return rgb_to_y(pred)[..., None], rgb_to_y(gt)[..., None]
    return pred.astype(np.float64), gt.astype(np.float64)


def psnr(pred: np.ndarray, gt: np.ndarray, crop: int = 0, y: bool = False) -> float:
    """10 log10(255^2 / MSE); ``inf`` for identical images."""
    a, b = _prepare(pred, gt, crop, y)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: np.ndarray, gt: np.ndarray, crop: int = 0, y: bool = False) -> float:
    """Mean SSIM (Wang et al. 2004) over the valid region, averaged over channels.

    The 11x11 Gaussian window (sigma 1.5) is separable, so it is applied as an 11x1 then a 1x11 filter in
    float64: the same numbers as the 2-D window to rounding, five times fewer operations.
    """
    a, b = _prepare(pred, gt, crop, y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_1d()
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[:, None]  # (C, 1, H, W)
    z = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))[:, None]
    if x.shape[-1] < 11 or x.shape[-2] < 11:
        raise VsrqError(f"SSIM needs at least 11x11 pixels after cropping, got {x.shape[-1]}x{x.shape[-2]}")
    c = x.shape[0]
    stats = F.conv2d(F.conv2d(torch.cat([x, z, x * x, z * z, x * z]), g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))
    mu1, mu2, xx, zz, xz = stats.split(c)
    s11, s22, s12 = xx - mu1**2, zz - mu2**2, xz - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


def tensor_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) float in [0, 1] -> (..., H, W, 3) uint8, rounded as BasicSR's tensor2img."""
    arr = frames.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return arr.movedim(-3, -1).cpu().numpy()
