"""LPIPS (Zhang et al. 2018, v0.1) and DISTS (Ding et al. 2020) in pure torch, on ImageNet backbones read
from local files in torchvision's layout.

vsrq cannot import torchvision (no CPU build fits its torch here), so the two backbones are written out
with torchvision's module indices (``features.0.weight`` ...) and read from the files torchvision itself
downloads (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``): from ``$VSRQ_WEIGHTS`` or
``$TORCH_HOME/hub/checkpoints``, never from the network. The small calibrated heads ship in the metrics'
own wheels, installed without dependencies and read as data, never imported: LPIPS's linear layers
(``lpips==0.1.4``: ``lpips/weights/v0.1/{alex,vgg}.pth``, BSD-2-Clause) and DISTS's alpha/beta
(``dists-pytorch==0.1``: ``DISTS_pytorch/weights.pt``, MIT).

* LPIPS: inputs in [-1, 1] are shifted and scaled per channel (shift -.030, -.088, -.188; scale .458,
  .448, .450); at five ReLU outputs of the backbone each feature vector is divided by its channel norm
  (+1e-10), the squared difference is weighted per channel by the non-negative linear layer, averaged over
  the image and summed over the five layers.
* DISTS: inputs in [0, 1] are normalised with ImageNet's mean/std; VGG16 with its max pools replaced by L2
  pooling (a 3x3 Hann window [.5, 1, .5]^2 / 4, stride 2, padding 1, ``sqrt(conv(x^2) + 1e-12)``); at the
  input and five stages, per channel, a structure term ``(2 mu_x mu_y + c) / (mu_x^2 + mu_y^2 + c)`` and a
  texture term ``(2 cov_xy + c) / (var_x + var_y + c)`` (c = 1e-6, moments over the image), weighted by
  alpha and beta normalised to sum 1 together; the score is 1 minus the weighted sum.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.weights import WEIGHTS_ENV, package_dir, read_checkpoint

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
VGG16_FILE = "vgg16-397923af.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/"
LPIPS_WHEEL = "lpips==0.1.4"
DISTS_WHEEL = "dists-pytorch==0.1"
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's `features` indices at which LPIPS taps the ReLU outputs (slice ends), and their widths
LPIPS_TAPS = {"alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
              "vgg": ((4, 9, 16, 23, 30), (64, 128, 256, 512, 512))}
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class MissingWeights(VsrqError):
    """A metric's weights file is not on this machine: the metric is reported unavailable."""


def weight_folders() -> list[Path]:
    """Where local weights are looked for: ``$VSRQ_WEIGHTS``, then torch hub's cache (``$TORCH_HOME``)."""
    folders = [Path(os.environ[WEIGHTS_ENV])] if os.environ.get(WEIGHTS_ENV) else []
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return folders + [Path(torch_home).expanduser() / "hub" / "checkpoints"]


def local_file(filename: str, source: str, package: str | None = None) -> Path:
    """A weights file from the local folders, then from ``package``'s installed folder; one line naming the
    file and where users get it (``source``) when it is nowhere."""
    folders = weight_folders()
    pkg = package_dir(package) if package else None
    for folder in folders + ([pkg] if pkg else []):
        if (folder / filename).is_file():
            return folder / filename
    where = " or ".join(str(f) for f in folders) if os.environ.get(WEIGHTS_ENV) else \
        f"${WEIGHTS_ENV} (unset) or {folders[0]}"
    raise MissingWeights(f"needs {filename} in {where} ({source})")


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features``, same indices."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``, same indices."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*layers)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VsrqError(f"{path}: not a state dict of tensors")
    return obj


def load_features(features: nn.Sequential, path: Path, network: str) -> nn.Sequential:
    """Fill ``features`` from a torchvision classifier file (its ``classifier.*`` ignored); a file of another
    network or shape is one error naming the first keys that differ."""
    state = {k[len("features."):]: v for k, v in _tensors(path).items() if k.startswith("features.")}
    expected = features.state_dict()
    missing = [f"features.{k}" for k in expected if k not in state]
    wrong = [f"features.{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    extra = [f"features.{k}" for k in state if k not in expected]
    if missing or wrong or extra:
        parts = [f"{label} {', '.join(keys[:2])}" for label, keys in
                 (("missing", missing), ("shape", wrong), ("unexpected", extra)) if keys]
        raise VsrqError(f"{path} is not torchvision's {network} ({'; '.join(parts)})")
    features.load_state_dict(state)
    return features.eval().requires_grad_(False)


class LPIPS(nn.Module):
    """LPIPS v0.1 on a torchvision backbone; ``forward(x, y)`` of (N, 3, H, W) in [-1, 1] gives (N,)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in LPIPS_TAPS:
            raise VsrqError(f"LPIPS backbone {net!r}: use alex or vgg")
        self.net = net
        self.features = alexnet_features() if net == "alex" else vgg16_features()
        self.taps, channels = LPIPS_TAPS[net]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def taps_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs LPIPS compares."""
        out, h, start = [], (x - self.shift) / self.scale, 0
        for end in self.taps:
            for i in range(start, end):
                h = self.features[i](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for fx, fy, lin in zip(self.taps_of(x), self.taps_of(y), self.lins):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean((1, 2, 3))
        return total

    def load_heads(self, path: Path) -> None:
        """The linear layers from the lpips wheel's ``lin{k}.model.1.weight``."""
        state = _tensors(path)
        for k, lin in enumerate(self.lins):
            w = state.get(f"lin{k}.model.1.weight")
            if w is None or w.shape != lin.weight.shape:
                raise VsrqError(f"{path}: not LPIPS {self.net} linear layers (lin{k}.model.1.weight "
                                f"{None if w is None else tuple(w.shape)}, expected {tuple(lin.weight.shape)})")
            lin.weight.data.copy_(w)


class L2Pool(nn.Module):
    """DISTS's L2 pooling: a Hann-windowed, stride-2 root-mean-square that replaces VGG's max pools."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])  # numpy.hanning(5)[1:-1]
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x ** 2, self.filter, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS on torchvision's VGG16; ``forward(x, y)`` of (N, 3, H, W) in [0, 1] gives (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.pools = nn.ModuleList(L2Pool(c) for c in DISTS_CHANNELS[1:5])
        self.alpha = nn.Parameter(torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1), requires_grad=False)
        self.beta = nn.Parameter(torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1), requires_grad=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input and the five stage outputs (relu1_2 ... relu5_3), each pool an L2 pool."""
        out, h = [x], (x - self.mean) / self.std
        pools = iter(self.pools)
        for i, layer in enumerate(self.features[:30]):
            h = next(pools)(h) if isinstance(layer, nn.MaxPool2d) else layer(h)
            if i in (3, 8, 15, 22, 29):
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        score = x.new_zeros(x.shape[0])
        for fx, fy, a, b in zip(self.stages(x), self.stages(y), alphas, betas):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            structure = (2 * mx * my + c) / (mx ** 2 + my ** 2 + c)
            texture = (2 * cov + c) / (vx + vy + c)
            score = score + (a * structure).sum((1, 2, 3)) + (b * texture).sum((1, 2, 3))
        return 1 - score

    def load_heads(self, path: Path) -> None:
        """alpha and beta from the dists-pytorch wheel's ``weights.pt``."""
        state = _tensors(path)
        for name in ("alpha", "beta"):
            w = state.get(name)
            if w is None or w.shape != getattr(self, name).shape:
                raise VsrqError(f"{path}: not DISTS weights ({name} {None if w is None else tuple(w.shape)}, "
                                f"expected {tuple(getattr(self, name).shape)})")
            getattr(self, name).data.copy_(w)


@lru_cache(maxsize=2)
def official_lpips(net: str = "alex") -> LPIPS:
    """LPIPS with the local ImageNet backbone and the lpips wheel's linear layers."""
    model = LPIPS(net)
    backbone = ALEXNET_FILE if net == "alex" else VGG16_FILE
    load_features(model.features, local_file(backbone, f"torchvision's ImageNet weights, {TORCHVISION_URL}{backbone}"),
                  "AlexNet" if net == "alex" else "VGG16")
    model.load_heads(local_file(f"weights/v0.1/{net}.pth", f"pip install --no-deps {LPIPS_WHEEL}", "lpips"))
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=1)
def official_dists() -> DISTS:
    """DISTS with the local VGG16 and the dists-pytorch wheel's alpha/beta."""
    model = DISTS()
    load_features(model.features, local_file(VGG16_FILE, f"torchvision's ImageNet weights, {TORCHVISION_URL}{VGG16_FILE}"),
                  "VGG16")
    model.load_heads(local_file("weights.pt", f"pip install --no-deps {DISTS_WHEEL}", "DISTS_pytorch"))
    return model.eval().requires_grad_(False)
