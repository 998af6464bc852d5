"""BasicVSR (Chan et al., CVPR 2021): bidirectional recurrent VSR with SPyNet alignment, x4.

Parameter names match BasicSR's ``BasicVSR`` so the official ``{'params': ...}`` checkpoints load
strictly. ``bidirectional=False`` gives BasicVSR-uni (forward propagation only, no fusion layer),
the variant QBasicVSR evaluates as a second architecture.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vsrq.errors import VsrqError
from vsrq.models.spynet import SpyNet, flow_warp

MIN_SIZE = 64  # BasicSR refuses smaller inputs: SPyNet's 6-level pyramid has nothing left to align
SCALE = 4


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv with an identity skip (EDSR style, no batch norm)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class ConvResidualBlocks(nn.Module):
    """The propagation trunk: an input conv, LeakyReLU, then ``num_block`` residual blocks."""

    def __init__(self, num_in_ch: int, num_feat: int, num_block: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(num_in_ch, num_feat, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block))),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class BasicVSR(nn.Module):
    """Input (N, T, 3, H, W) in [0, 1]; output (N, T, 3, 4H, 4W)."""

    def __init__(self, num_feat: int = 64, num_block: int = 30, bidirectional: bool = True) -> None:
        super().__init__()
        self.num_feat = num_feat
        self.num_block = num_block
        self.bidirectional = bidirectional
        # Training through the recurrence keeps every step's activations (a QuantVSR fine-tuning run on
        # 8 frames of two 64x64 crops was killed at 23 GB). With this set, each step's activations are
        # recomputed in backward instead (one more forward).
        self.checkpoint_steps = False
        self.spynet = SpyNet()
        if bidirectional:
            self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        self.forward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        if bidirectional:
            self.fusion = nn.Conv2d(num_feat * 2, num_feat, 1, 1, 0)
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, 64 * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.lrelu = nn.LeakyReLU(0.1)

    def concat_inputs(self) -> dict[str, tuple[int, ...]]:
        """Convs whose input is a concatenation, with the channels of each source (frame, features)."""
        trunks = ("backward_trunk", "forward_trunk") if self.bidirectional else ("forward_trunk",)
        splits = {f"{t}.main.0": (3, self.num_feat) for t in trunks}
        if self.bidirectional:
            splits["fusion"] = (self.num_feat, self.num_feat)  # backward and forward features
        return splits

    def compute_flows(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Flows between neighbours: (backward t <- t+1, forward t+1 <- t), each (N, T-1, 2, H, W).

        The backward flows are ``None`` for the unidirectional model, which never uses them.
        """
        n, t, c, h, w = x.shape
        x1 = x[:, :-1].reshape(-1, c, h, w)
        x2 = x[:, 1:].reshape(-1, c, h, w)
        flows_forward = self.spynet(x2, x1).view(n, t - 1, 2, h, w)
        flows_backward = self.spynet(x1, x2).view(n, t - 1, 2, h, w) if self.bidirectional else None
        return flows_backward, flows_forward

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[2] != 3:
            raise VsrqError(f"BasicVSR expects frames shaped (N, T, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise VsrqError(f"frames are {w}x{h}; BasicVSR needs at least {MIN_SIZE}x{MIN_SIZE} low-resolution pixels")
        if x.shape[1] < 2:
            raise VsrqError("BasicVSR needs at least 2 frames: it aligns neighbours with optical flow")

    def forward(
        self,
        x: torch.Tensor,
        output_frames: range | None = None,
        flows: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Super-resolve all frames, or only ``output_frames`` (the rest still feed the recurrence).

        Streaming uses ``output_frames`` to skip the upsampler, a third of the cost, on the overlap
        frames that only warm up the propagation. ``flows`` passes flows already computed by
        :meth:`compute_flows` (a caller that analyses motion first need not run SPyNet twice).
        """
        self.check_input(x)
        n, t, _, h, w = x.shape
        wanted = range(t) if output_frames is None else output_frames
        flows_backward, flows_forward = self.compute_flows(x) if flows is None else flows

        backward_feats: dict[int, torch.Tensor] = {}
        if self.bidirectional:
            assert flows_backward is not None
            feat = x.new_zeros(n, self.num_feat, h, w)
            for i in range(t - 1, wanted.start - 1, -1):
                if i < t - 1:
                    feat = flow_warp(feat, flows_backward[:, i].permute(0, 2, 3, 1))
                feat = self._step(self.backward_trunk, torch.cat((x[:, i], feat), dim=1))
                if i in wanted:
                    backward_feats[i] = feat

        outputs = []
        feat = x.new_zeros(n, self.num_feat, h, w)
        for i in range(wanted.stop):
            x_i = x[:, i]
            if i > 0:
                feat = flow_warp(feat, flows_forward[:, i - 1].permute(0, 2, 3, 1))
            feat = self._step(self.forward_trunk, torch.cat((x_i, feat), dim=1))
            if i in wanted:
                outputs.append(self._step(self.reconstruct, x_i, feat, backward_feats.get(i)))
        return torch.stack(outputs, dim=1)

    def _step(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor | None) -> torch.Tensor:
        if self.checkpoint_steps and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def reconstruct(self, x_i: torch.Tensor, feat: torch.Tensor, backward_feat: torch.Tensor | None) -> torch.Tensor:
        """Fuse the propagated features of one frame and upsample x4, adding the bilinear base."""
        out = self.lrelu(self.fusion(torch.cat((backward_feat, feat), dim=1))) if backward_feat is not None else feat
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x_i, scale_factor=SCALE, mode="bilinear", align_corners=False)
