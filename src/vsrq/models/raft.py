"""RAFT optical flow (Teed & Deng, ECCV 2020), the large model, as MGLD-VSR uses it.

Written from the paper with the official code's module names and constants, so that
``raft-things.pth`` from princeton-vl/RAFT loads strictly (its ``module.`` prefix from DataParallel
is stripped): feature and context encoders (BasicEncoder: a 7x7 stride-2 stem and three pairs of
residual blocks to 1/8 resolution; instance norm for the features, batch norm for the context),
the all-pairs correlation volume pooled into a 4-level pyramid and looked up in a radius-4 window,
the update block (motion encoder, separable 1x5 / 5x1 ConvGRU with 128 hidden channels, flow head),
and convex x8 upsampling of the final flow with a learned 9-neighbour mask.

No weights ship: :func:`load_raft` reads a local copy. Images are (N, 3, H, W) RGB in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError

HIDDEN = 128  # ConvGRU state channels (the context encoder's first half)
CONTEXT = 128  # context features fed to the GRU at every iteration (its second half)
FEATURES = 256  # feature-encoder channels correlated
CORR_LEVELS = 4
CORR_RADIUS = 4
UPSAMPLE = 8  # the encoders work at 1/8 resolution
ITERS = 12
MIN_SIZE = UPSAMPLE * 2 ** (CORR_LEVELS - 1)  # smallest padded side with a 1x1 coarsest correlation level


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # no affine parameters, no running statistics
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 conv-norm-ReLU; a strided block projects its shortcut with a 1x1 conv and ``norm3``."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = _norm(norm, cout)
        self.norm2 = _norm(norm, cout)
        self.downsample: nn.Module | None = None
        if stride != 1:
            # The official block registers this norm twice (as norm3 and inside downsample), so
            # its checkpoints hold both names; sharing the module reproduces that.
            self.norm3 = _norm(norm, cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BasicEncoder(nn.Module):
    """Image -> features at 1/8 resolution: 64 channels at 1/2, then 64, 96, 128 at 1/2, 1/4, 1/8, then 1x1."""

    def __init__(self, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        widths, strides = (64, 96, 128), (1, 2, 2)
        cin = 64
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"layer{i}", nn.Sequential(ResidualBlock(cin, width, norm, stride),
                                                     ResidualBlock(width, width, norm, 1)))
            cin = width
        self.conv2 = nn.Conv2d(128, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class BasicMotionEncoder(nn.Module):
    """Correlation window features and the current flow -> 126 motion channels, plus the flow itself."""

    def __init__(self) -> None:
        super().__init__()
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.convc1 = nn.Conv2d(corr_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(192 + 64, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat((F.relu(self.conv(torch.cat((c, f), dim=1))), flow), dim=1)


class SepConvGRU(nn.Module):
    """A convolutional GRU applied twice: with 1x5 kernels (horizontal), then 5x1 (vertical)."""

    def __init__(self, hidden: int = HIDDEN, inputs: int = CONTEXT + HIDDEN) -> None:
        super().__init__()
        for suffix, kernel, pad in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in ("z", "r", "q"):
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad))

    def _step(self, h: torch.Tensor, x: torch.Tensor, suffix: str) -> torch.Tensor:
        hx = torch.cat((h, x), dim=1)
        z = torch.sigmoid(getattr(self, f"convz{suffix}")(hx))
        r = torch.sigmoid(getattr(self, f"convr{suffix}")(hx))
        q = torch.tanh(getattr(self, f"convq{suffix}")(torch.cat((r * h, x), dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._step(self._step(h, x, "1"), x, "2")


class FlowHead(nn.Module):
    def __init__(self, cin: int = HIDDEN, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    """One refinement: motion features + context -> new GRU state -> flow residual; the mask head on the state."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder()
        self.gru = SepConvGRU()
        self.flow_head = FlowHead()
        self.mask = nn.Sequential(nn.Conv2d(HIDDEN, 256, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(256, 9 * UPSAMPLE * UPSAMPLE, 1))

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor,
                flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new hidden state and the flow residual (the official block also returns the mask every step)."""
        net = self.gru(net, torch.cat((inp, self.encoder(flow, corr)), dim=1))
        return net, self.flow_head(net)

    def upsample_mask(self, net: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.mask(net)  # the official scale (it balances gradients in training)


def coords_grid(n: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel coordinates ``(n, 2, h, w)``, channel 0 = x (column), channel 1 = y (row)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack((xs, ys)).unsqueeze(0).expand(n, 2, h, w)


def correlation_pyramid(fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = CORR_LEVELS) -> list[torch.Tensor]:
    """All-pairs correlation ``<f1(p), f2(q)> / sqrt(C)``, shaped ``(N*H*W, 1, H, W)`` over q, then
    average-pooled by 2 over q for each further level (p keeps full 1/8 resolution)."""
    n, c, h, w = fmap1.shape
    corr = torch.matmul(fmap1.reshape(n, c, h * w).transpose(1, 2), fmap2.reshape(n, c, h * w))
    corr = (corr / torch.sqrt(torch.tensor(float(c)))).reshape(n * h * w, 1, h, w)
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = F.avg_pool2d(corr, 2, stride=2)
        pyramid.append(corr)
    return pyramid


def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``img`` (B, C, H, W) at pixel coordinates ``xy`` (B, h, w, 2); zero outside.

    Normalized for ``align_corners=False`` (pixel x -> (2x + 1) / W - 1): the same sample points as
    the official ``align_corners=True`` form where that is defined, and also for a 1-pixel level.
    """
    h, w = img.shape[-2:]
    grid = torch.stack(((2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1), dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def lookup(pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int = CORR_RADIUS) -> torch.Tensor:
    """Correlation values in a ``(2r+1)^2`` window around ``coords`` (N, 2, H, W) at every level.

    Channels: level-major; within a level, index ``a * (2r+1) + b`` holds the offset
    ``dx = a - r, dy = b - r`` (x-major, as the official window is built and its weights trained).
    """
    n, _, h, w = coords.shape
    offsets = torch.arange(-radius, radius + 1, dtype=coords.dtype, device=coords.device)
    dx, dy = torch.meshgrid(offsets, offsets, indexing="ij")  # [a, b] -> (a - r, b - r)
    delta = torch.stack((dx, dy), dim=-1).view(1, 2 * radius + 1, 2 * radius + 1, 2)
    centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
    out = []
    for level, corr in enumerate(pyramid):
        window = _sample(corr, centre / 2**level + delta)  # (N*H*W, 1, 2r+1, 2r+1)
        out.append(window.view(n, h, w, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int = UPSAMPLE) -> torch.Tensor:
    """Flow ``(N, 2, H, W)`` -> ``(N, 2, fH, fW)``: each fine pixel is a convex (softmax) combination
    of the 3x3 coarse neighbours of its coarse pixel, in fine-pixel units (x ``factor``).

    ``mask`` (N, 9*f*f, H, W): channel ``k*f*f + i*f + j`` weighs neighbour k (row-major 3x3) for
    sub-pixel row i, column j. Neighbours outside the image are zero flow.
    """
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, factor, factor, h, w), dim=2)
    neighbours = F.unfold(factor * flow, (3, 3), padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (weights * neighbours).sum(dim=2)  # (N, 2, i, j, H, W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, factor * h, factor * w)


class RAFT(nn.Module):
    """RAFT large: ``forward(image1, image2)`` -> flow ``(N, 2, H, W)`` in pixels from image1 to image2,
    i.e. ``image1(p) ~ image2(p + flow(p))``.

    Inputs are RGB in [0, 1] (scaled to [-1, 1] inside). Sides are padded (replicate, centred as the
    official evaluation does) to multiples of 8 and at least 64, and the flow is cropped back.
    """

    def __init__(self, iters: int = ITERS) -> None:
        super().__init__()
        self.iters = iters
        self.fnet = BasicEncoder(FEATURES, "instance")
        self.cnet = BasicEncoder(HIDDEN + CONTEXT, "batch")
        self.update_block = BasicUpdateBlock()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int | None = None) -> torch.Tensor:
        if image1.shape != image2.shape or image1.dim() != 4 or image1.shape[1] != 3:
            raise VsrqError(f"RAFT needs two (N, 3, H, W) images of one shape, got {tuple(image1.shape)} "
                            f"and {tuple(image2.shape)}")
        h, w = image1.shape[-2:]
        ph = max(-h % UPSAMPLE, MIN_SIZE - h)
        pw = max(-w % UPSAMPLE, MIN_SIZE - w)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            image1 = F.pad(image1, pad, mode="replicate")
            image2 = F.pad(image2, pad, mode="replicate")
        flow = self.estimate(image1, image2, self.iters if iters is None else iters)
        return flow[..., pad[2]: pad[2] + h, pad[0]: pad[0] + w]

    def estimate(self, image1: torch.Tensor, image2: torch.Tensor, iters: int) -> torch.Tensor:
        """Flow for images whose sides are multiples of 8 (and at least 64)."""
        image1 = 2 * image1 - 1
        image2 = 2 * image2 - 1
        n = image1.shape[0]
        fmap1, fmap2 = self.fnet(torch.cat((image1, image2))).float().split(n)  # instance norm: per image
        pyramid = correlation_pyramid(fmap1, fmap2)
        net, inp = self.cnet(image1).split((HIDDEN, CONTEXT), dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        coords0 = coords_grid(n, *fmap1.shape[-2:], device=fmap1.device)
        coords1 = coords0.clone()
        for _ in range(iters):
            net, delta = self.update_block(net, inp, lookup(pyramid, coords1), coords1 - coords0)
            coords1 = coords1 + delta
        return convex_upsample(coords1 - coords0, self.update_block.upsample_mask(net))


def load_raft(path: str | Path, iters: int = ITERS) -> RAFT:
    """RAFT large with the weights of ``raft-things.pth`` (or any checkpoint of the large model), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"RAFT weights {path} not found: download raft-things.pth from princeton-vl/RAFT "
                        "(download_models.sh) and pass its path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise VsrqError(f"{path}: cannot read as a PyTorch checkpoint ({type(exc).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VsrqError(f"{path}: not a RAFT checkpoint (expected a state dict of tensors)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    if not any(k.startswith("update_block.") for k in state):
        raise VsrqError(f"{path}: not a RAFT checkpoint (no fnet./cnet./update_block. weights)")
    net = RAFT(iters)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        small = "update_block.mask.0.weight" not in state
        parts = [f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatch", mismatched)) if keys]
        hint = " (raft-small? vsrq implements the large model, raft-things.pth)" if small else ""
        raise VsrqError(f"{path} does not fit RAFT large{hint}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
    return net.eval()


def flow_estimator(net: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """vsrq's flow convention over a RAFT: ``(ref, supp) -> flow`` that warps ``supp`` onto ``ref``
    (``flow_warp(supp, flow)`` ~ ``ref``), as :class:`~vsrq.models.spynet.SpyNet` gives.

    That flow samples ``supp`` at ``p + flow(p)`` for each pixel p of ``ref``: RAFT's flow from image1 =
    ref to image2 = supp. RAFT runs in float32 without gradients; the flow comes back in ref's dtype.
    """
    net.eval()

    def flow(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net.to(ref.device)(ref.float(), supp.float()).to(ref.dtype)

    return flow
