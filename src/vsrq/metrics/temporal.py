"""Temporal consistency of a clip: tOF (TecoGAN), E_warp against GT flow (Lai et al.), E*warp of the
prediction alone (QuantVSR's table), and a frame-difference error that needs no learned flow.

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
  and ``x + F(x)`` lies inside the frame. Lai et al. also drop motion boundaries; this one does not.
* E*warp (:func:`estar_warp`): QuantVSR's ``benchmarks/RAFT/ewarp.py`` (after Lai et al.'s code), a
  no-reference score of the prediction's own flow: see its docstring.
* tdiff: the RMS over pixels and channels of ``(pred_t - pred_{t-1}) - (gt_t - gt_{t-1})`` in 8-bit
  levels, mean over pairs: flicker the ground truth does not have, with no flow estimator at all (static
  regions weigh fully, moving ones count any motion error too).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

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


def frame_tensor(frame: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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
            ref = torch.cat([frame_tensor(gt, f32), frame_tensor(g0, f32), frame_tensor(pred, f32)])
            supp = torch.cat([frame_tensor(g0, f32), frame_tensor(gt, f32), frame_tensor(p0, f32)])
            flows = self.flow(ref, supp).double()
            fwd, bwd, pred_fwd = flows[0:1], flows[1:2], flows[2:3]
            tof = self._inner(torch.linalg.vector_norm(pred_fwd - fwd, dim=1)).mean()
            mask = self._inner(non_occluded(fwd, bwd)).unsqueeze(1)
            warped = flow_warp(frame_tensor(p0, torch.float64), fwd.permute(0, 2, 3, 1))
            sq = self._inner((frame_tensor(pred, torch.float64) - warped) ** 2)
            # no pixel passes the check (all moved out of view): the pair's error is 0, as in Lai et al.'s code
            ewarp = (sq * mask).sum() / max(int(mask.sum()) * sq.shape[1], 1)
        return PairScores(float(tof), float(ewarp) * EWARP_SCALE)


def resample(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """FlowNet2's Resample2d (bilinear, indices clamped to the frame), which QuantVSR's E*warp warps with:
    ``x`` (N, C, H, W) sampled at ``p + flow(p)``, ``flow`` (N, 2, H, W) in pixels."""
    return flow_warp(x, flow.permute(0, 2, 3, 1), padding_mode="border")


def _magnitude(flow: torch.Tensor) -> torch.Tensor:
    return flow[:, 0] ** 2 + flow[:, 1] ** 2


def estar_occlusion(fw: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """QuantVSR's occlusion mask (N, H, W) of frame t, from ``fw`` (t -> t+1) and ``bw`` (t+1 -> t):
    the forward-backward check ``|fw + bw~|^2 > 0.01 (|bw~|^2 + |fw|^2) + 0.5`` with ``bw~`` = bw sampled
    at ``p + fw(p)``, or a motion boundary ``|grad fw|^2 > 0.01 |fw|^2 + 0.002`` (forward differences,
    0 in the last row / column)."""
    bw_w = resample(bw, fw)
    check = _magnitude(fw + bw_w) > 0.01 * (_magnitude(bw_w) + _magnitude(fw)) + 0.5
    du = torch.zeros_like(fw)
    dv = torch.zeros_like(fw)
    du[..., :, :-1] = fw[..., :, :-1] - fw[..., :, 1:]
    dv[..., :-1, :] = fw[..., :-1, :] - fw[..., 1:, :]
    boundary = (du ** 2 + dv ** 2).sum(1) > 0.01 * _magnitude(fw) + 0.002
    return check | boundary


def estar_pair(img1: torch.Tensor, img2: torch.Tensor, fw: torch.Tensor, bw: torch.Tensor) -> float:
    """One pair's E*warp term: squared RGB error of frame t+1 warped to t, summed over channels and
    non-occluded pixels, over the number of those pixels (all pixels x 3 when none is left)."""
    keep = (~estar_occlusion(fw, bw)).unsqueeze(1).to(img1.dtype)
    sq = ((resample(img2, fw) - img1) * keep) ** 2
    n = float(keep.sum())
    return float(sq.sum()) / (n if n else sq.numel())


def estar_prepare(frame: np.ndarray) -> torch.Tensor:
    """A frame as QuantVSR's E*warp feeds it: [0, 1] RGB, 0.5x bilinear (no antialiasing), padded
    (replicated) to multiples of 8 as RAFT's InputPadder does ('sintel' mode: split between both sides)."""
    x = F.interpolate(frame_tensor(frame, torch.float32), scale_factor=0.5, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    ph, pw = -h % 8, -w % 8
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")


class EstarWarpMeter:
    """E*warp (x 1e3) of a prediction clip as QuantVSR computes it, fed frames in order.

    For each consecutive pair (t, t+1) of :func:`estar_prepare`d frames, forward and backward flow from
    ``flow`` (vsrq's ``(ref, supp)`` convention: ``flow(img1, img2)`` is RAFT's image1 -> image2 flow),
    then :func:`estar_pair`; the clip's value is the mean over pairs x 1e3 (:attr:`values` keeps each
    pair's). ``input_scale`` multiplies the frames the flow network sees: QuantVSR's script gives RAFT
    frames in [0, 1] where RAFT's own code expects [0, 255], so its published figures come from RAFT seeing
    1/255 of the contrast; ``1/255`` reproduces them, ``1`` gives the flow RAFT was trained for.
    """

    def __init__(self, flow: Flow, input_scale: float = 1.0) -> None:
        self.flow, self.input_scale = flow, input_scale
        self._prev: torch.Tensor | None = None

    def add(self, pred: np.ndarray) -> float | None:
        """The pair ending at this frame, x 1e3; None for the first frame."""
        if min(pred.shape[:2]) <= 2 * MIN_SIDE:
            raise VsrqError(f"E*warp halves frames before its flow, so they must be larger than {2 * MIN_SIDE}x"
                            f"{2 * MIN_SIDE}; got {pred.shape[1]}x{pred.shape[0]}")
        cur = estar_prepare(pred)
        prev, self._prev = self._prev, cur
        if prev is None:
            return None
        if prev.shape != cur.shape:
            raise VsrqError(f"frames of one clip differ in size ({tuple(prev.shape[-2:])} then {tuple(cur.shape[-2:])})")
        with torch.no_grad():
            s = self.input_scale
            flows = self.flow(torch.cat([prev, cur]) * s, torch.cat([cur, prev]) * s).float()
        return estar_pair(prev, cur, flows[0:1], flows[1:2]) * EWARP_SCALE


def frame_difference_error(pred0: np.ndarray, pred1: np.ndarray, gt0: np.ndarray, gt1: np.ndarray) -> float:
    """tdiff of one pair: RMS of ``(pred1 - pred0) - (gt1 - gt0)`` over pixels and channels, 8-bit levels."""
    d = (pred1.astype(np.float64) - pred0) - (gt1.astype(np.float64) - gt0)
    return float(np.sqrt(np.mean(d ** 2)))
