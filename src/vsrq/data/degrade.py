"""The two x4 degradations of the VSR literature, reproduced exactly.

BI: MATLAB ``imresize(img, 1/4, 'bicubic')`` with antialiasing (cubic a = -0.5, kernel widened by
the scale, mirrored borders), rows then columns, rounding to uint8 after each pass as MATLAB's
integer path does.

BD: the MATLAB recipe used to make the Vimeo-90K/Vid4 BD data (the VRT/KAIR script): a
``fspecial('gaussian', ceil(3*sigma)*2+2, sigma)`` kernel (12x12 for sigma 1.6), ``imfilter`` with
replicated borders, then every 4th pixel from the second (1-based ``2:4:end-2``). BasicSR's
``duf_downsample`` (13x13, reflect) is a different operator and gives ~17 dB with the official BD
weights.
"""

from __future__ import annotations

import math

import numpy as np

from vsrq.errors import VsrqError

BD_SIGMA = 1.6


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))


def resize_weights(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's contributions(): (weights, 0-based input indices), each (out_len, taps)."""
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinate of each output centre
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    # mirror out-of-range indices: [1..n, n..1] repeated
    mirror = np.concatenate((np.arange(in_len), np.arange(in_len - 1, -1, -1)))
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx0[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, idx = resize_weights(img.shape[axis], out_len, scale)
    moved = np.moveaxis(img, axis, 0)  # (L, ...)
    gathered = moved[idx]  # (out, taps, ...)
    w = weights.reshape(weights.shape + (1,) * (moved.ndim - 1))
    return np.moveaxis((gathered * w).sum(axis=1), 0, axis)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double->uint8: round half away from zero, saturate."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB-compatible bicubic resize of an (H, W[, C]) image.

    A uint8 input gives uint8 output, rounded after each pass (MATLAB's integer path); a float
    input stays float64 with no rounding.
    """
    is_uint8 = img.dtype == np.uint8
    out = img.astype(np.float64)
    h, w = img.shape[:2]
    for axis, length in ((0, h), (1, w)):
        out = _resize_axis(out, axis, int(math.ceil(length * scale)), scale)
        if is_uint8:
            out = _round_uint8(out)
    return out if not is_uint8 else out.astype(np.uint8)


def gaussian_kernel_1d(sigma: float = BD_SIGMA) -> np.ndarray:
    """The 1-D factor of MATLAB's fspecial('gaussian', ceil(3*sigma)*2+2, sigma) (separable, sums to 1)."""
    size = int(math.ceil(3 * sigma)) * 2 + 2
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_replicate(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """MATLAB imfilter(..., 'replicate') along one axis; an even kernel's centre is tap floor((n+1)/2)."""
    n = kernel.size
    before = (n + 1) // 2 - 1
    pad = [(0, 0)] * img.ndim
    pad[axis] = (before, n - 1 - before)
    padded = np.pad(img, pad, mode="edge")
    length = img.shape[axis]
    out = np.zeros_like(img, dtype=np.float64)
    for k in range(n):
        out += kernel[k] * np.take(padded, np.arange(k, k + length), axis=axis)
    return out


def blur_downsample(img: np.ndarray, scale: int = 4, sigma: float = BD_SIGMA) -> np.ndarray:
    """BD degradation of an (H, W[, C]) image; uint8 in, uint8 out (imfilter rounds uint8 results)."""
    is_uint8 = img.dtype == np.uint8
    g = gaussian_kernel_1d(sigma)
    out = _filter_replicate(_filter_replicate(img.astype(np.float64), g, 0), g, 1)
    if is_uint8:
        out = _round_uint8(out)
    start = scale // 2 - 1  # 1-based scale/2 -> 0-based
    h, w = img.shape[:2]
    return out[start : h - scale // 2 : scale, start : w - scale // 2 : scale]


def degrade(img: np.ndarray, mode: str, scale: int = 4) -> np.ndarray:
    """GT frame -> LR frame with the named degradation ('bi' or 'bd')."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise VsrqError(f"frame size {w}x{h} is not divisible by {scale}; crop it to a multiple (--modcrop)")
    if mode == "bi":
        return imresize(img, 1.0 / scale)
    if mode == "bd":
        return blur_downsample(img, scale)
    raise VsrqError(f"unknown degradation {mode!r}; use 'bi' or 'bd'")


def modcrop(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """Crop the bottom/right so both sides divide by ``scale`` (BasicSR's mod_crop)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]
