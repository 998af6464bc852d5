"""Temporal consistency of a clip: tOF (TecoGAN) and the warping error E_warp (Lai et al.).

Both compare consecutive frames through optical flow from vsrq's SpyNet (the official weights
inside BasicVSR's checkpoint), fed two frames at a time so any clip length runs in bounded memory.
Flow is estimated on the full RGB frames; a border ``crop`` only narrows the pixels averaged.

* tOF (Chu et al., "Learning temporal coherence via self-supervision for GAN-based video
  generation", 2020): for each consecutive pair, the mean over pixels of the length of
  ``flow(pred_{t-1} -> pred_t) - flow(gt_{t-1} -> gt_t)``, in pixels (TecoGAN's code takes the
  per-pixel vector length, then the mean); the clip's value is the mean over pairs. TecoGAN used
  OpenCV's Farneback flow on grey frames, so vsrq's values compare within vsrq, not with published tables.
* E_warp (Lai et al., "Learning blind video temporal consistency", 2018): for each t >= 1, the
  mean over non-occluded pixels and RGB channels (frames in [0, 1]) of
  ``(pred_t - warp(pred_{t-1}, F))^2``, with ``F`` the GT flow t <- t-1; the clip's value is the
  mean over t, reported x 1e3. Non-occluded means the forward-backward check on the GT flows
  passes, ``|F + B~|^2 <= 0.01 (|F|^2 + |B~|^2) + 0.5`` with ``B`` the GT flow t-1 <- t and ``B~``
  it sampled at ``x + F(x)`` (Sundaram et al. 2010, as Ruder et al. 2016 and Lai et al. use it),
  and ``x + F(x)`` lies inside the frame. Lai et al. also drop motion boundaries; vsrq does not.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from vsrq.errors import VsrqError
from vsrq.models.spynet import flow_warp

# (ref, supp) -> flow (N, 2, H, W) in pixels that warps supp onto ref, as SpyNet's forward
Flow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MIN_SIDE = 32  # SpyNet rounds sides up to multiples of 32 and its 6-level pyramid needs 64
EWARP_SCALE = 1e3  # E_warp is reported x 1e3, as in Lai et al. and the VSR papers that quote it


class PairScores(NamedTuple):
    """Scores of one consecutive pair (t-1, t)."""

    tof: float  # pixels
    ewarp: float  # x 1e3


def _tensor(frame: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0).to(dtype) / 255.0


def non_occluded(fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
    """Mask (N, H, W) of pixels of frame t whose flow ``fwd`` (t <- t-1) passes the forward-backward
    check against ``bwd`` (t-1 <- t) and lands inside frame t-1; flows are (N, 2, H, W)."""
    _, _, h, w = fwd.shape
    f = fwd.permute(0, 2, 3, 1)
    b = flow_warp(bwd, f).permute(0, 2, 3, 1)
    consistent = ((f + b) ** 2).sum(-1) <= 0.01 * ((f ** 2).sum(-1) + (b ** 2).sum(-1)) + 0.5
    gy, gx = torch.meshgrid(torch.arange(h, dtype=f.dtype), torch.arange(w, dtype=f.dtype), indexing="ij")
    x, y = gx + f[..., 0], gy + f[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return consistent & inside


class TemporalMeter:
    """tOF and E_warp of one clip, fed its (pred, gt) frames in order; keeps only the previous pair."""

    def __init__(self, flow: Flow, crop: int = 0) -> None:
        self.flow = flow
        self.crop = crop
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        """The pixels left after the border crop (last two dims)."""
        c = self.crop
        return x[..., c:-c, c:-c] if c else x

    def add(self, pred: np.ndarray, gt: np.ndarray) -> PairScores | None:
        """Scores of the pair ending at this frame; None for the clip's first frame."""
        if pred.shape != gt.shape:
            raise VsrqError(f"prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth {gt.shape[1]}x{gt.shape[0]}")
        if min(pred.shape[:2]) <= MIN_SIDE:
            raise VsrqError(f"tOF and E_warp need frames larger than {MIN_SIDE}x{MIN_SIDE} (SpyNet's pyramid), "
                            f"got {pred.shape[1]}x{pred.shape[0]}")
        if self.crop and min(pred.shape[:2]) <= 2 * self.crop:
            raise VsrqError(f"a border crop of {self.crop} leaves no pixels of a {pred.shape[1]}x{pred.shape[0]} frame")
        prev, self._prev = self._prev, (pred, gt)
        if prev is None:
            return None
        (p0, g0), f32 = prev, torch.float32
        with torch.no_grad():
            # one batch: GT forward (t <- t-1), GT backward (t-1 <- t), prediction forward
            ref = torch.cat([_tensor(gt, f32), _tensor(g0, f32), _tensor(pred, f32)])
            supp = torch.cat([_tensor(g0, f32), _tensor(gt, f32), _tensor(p0, f32)])
            flows = self.flow(ref, supp).double()
            fwd, bwd, pred_fwd = flows[0:1], flows[1:2], flows[2:3]
            tof = self._inner(torch.linalg.vector_norm(pred_fwd - fwd, dim=1)).mean()
            mask = self._inner(non_occluded(fwd, bwd)).unsqueeze(1)
            warped = flow_warp(_tensor(p0, torch.float64), fwd.permute(0, 2, 3, 1))
            sq = self._inner((_tensor(pred, torch.float64) - warped) ** 2)
            # no pixel passes the check (all moved out of view): the pair's error is 0, as in Lai et al.'s code
            ewarp = (sq * mask).sum() / max(int(mask.sum()) * sq.shape[1], 1)
        return PairScores(float(tof), float(ewarp) * EWARP_SCALE)
