"""The metrics ``vsrq eval --metrics`` computes, which of them can run here, and per-clip meters for them.

Every metric is scored per frame (frame metrics) or per consecutive pair (temporal ones, which frame t
holds for the pair (t-1, t)). Full-reference metrics need ground truth; no-reference ones (NIQE, BRISQUE,
E*warp) score a prediction alone. A metric whose weights are not on this machine is reported unavailable with
the file it needs and where users get it; nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from vsrq.errors import VsrqError
from vsrq.metrics.brisque import brisque, live_model
from vsrq.metrics.niqe import niqe
from vsrq.metrics.perceptual import LPIPS, DISTS, MissingWeights, local_file, official_dists, official_lpips
from vsrq.metrics.psnr_ssim import psnr, ssim
from vsrq.metrics.temporal import EstarWarpMeter, Flow, TemporalMeter, frame_difference_error, frame_tensor
from vsrq.models.raft import flow_estimator, load_raft
from vsrq.models.spynet import official_spynet

RAFT_FILE = "raft-things.pth"
RAFT_SOURCE = "princeton-vl/RAFT's download_models.sh, models/raft-things.pth"
RAFT_ITERS = 20  # QuantVSR's ewarp.py


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: its column label, unit, direction, whether it needs GT, whether it scores pairs."""

    label: str
    unit: str
    higher_better: bool
    needs_gt: bool
    temporal: bool
    note: str = ""


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR", "dB", True, True, False),
    "ssim": MetricInfo("SSIM", "", True, True, False),
    "lpips": MetricInfo("LPIPS (alex)", "", False, True, False, "LPIPS v0.1, AlexNet backbone, inputs in [-1, 1]"),
    "lpips_vgg": MetricInfo("LPIPS (vgg)", "", False, True, False, "LPIPS v0.1, VGG16 backbone"),
    "dists": MetricInfo("DISTS", "", False, True, False, "frames as given, no resize to 256"),
    "niqe": MetricInfo("NIQE", "", False, False, False,
                       "MATLAB / BasicSR algorithm on Y; lower is more natural"),
    "brisque": MetricInfo("BRISQUE", "", False, False, False,
                          "LIVE's MATLAB release and model on rgb2gray; lower is better; not PIQ/pyiqa's code"),
    "ewarp": MetricInfo("E*warp", "x1e-3", False, False, True,
                        "QuantVSR's ewarp.py on the frames as given (PNG, lossless); QuantVSR scores "
                        "re-encoded mp4"),
    "tlp": MetricInfo("tLP", "x100", False, True, True, "|LPIPS(p_t, p_t-1) - LPIPS(g_t, g_t-1)|, alex (TecoGAN)"),
    "tof": MetricInfo("tOF", "px", False, True, True, "SpyNet flow (TecoGAN used Farneback): vsrq-only scale"),
    "ewarp_gt": MetricInfo("E_warp (GT flow)", "x1e-3", False, True, True,
                           "Lai et al. with SpyNet flow of the ground truth"),
    "tdiff": MetricInfo("tdiff", "levels", False, True, True, "RMS of frame differences vs GT's; no flow"),
}
DEFAULT = ("psnr", "ssim")
TLP_SCALE = 100.0


def parse_metrics(text: str) -> list[str]:
    """``psnr,ssim,lpips-vgg`` -> names (``-`` and ``_`` alike; ``all`` is every metric), each once."""
    names: list[str] = []
    for item in (t.strip().lower().replace("-", "_") for t in text.split(",")):
        if not item:
            continue
        expanded = list(METRICS) if item == "all" else [item]
        for name in expanded:
            if name not in METRICS:
                raise VsrqError(f"unknown metric {item!r}; choose from {', '.join(METRICS)} or all")
            if name not in names:
                names.append(name)
    if not names:
        raise VsrqError("no metric named")
    return names


class Meter(Protocol):
    """Scores of one clip, fed its frames in order (``gt`` None when there is no ground truth)."""

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]: ...


class _FrameMeter:
    def __init__(self, fn: Callable[[np.ndarray, np.ndarray | None], dict[str, float]]) -> None:
        self.fn = fn

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
        return self.fn(pred, gt)


class _PairMeter:
    """A pair metric: ``fn(pred0, pred1, gt0, gt1)`` on the previous frame and this one."""

    def __init__(self, fn: Callable[..., dict[str, float]]) -> None:
        self.fn = fn
        self._prev: tuple[np.ndarray, np.ndarray | None] | None = None

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
        prev, self._prev = self._prev, (pred, gt)
        return {} if prev is None else self.fn(prev[0], pred, prev[1], gt)


class _TemporalGT:
    """tOF and E_warp (GT flow) share one flow batch."""

    def __init__(self, flow: Flow, crop: int, names: set[str]) -> None:
        self.meter, self.names = TemporalMeter(flow, crop), names

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
        pair = self.meter.add(pred, gt)
        if pair is None:
            return {}
        return {k: v for k, v in (("tof", pair.tof), ("ewarp_gt", pair.ewarp)) if k in self.names}


class _Estar:
    def __init__(self, flow: Flow, input_scale: float) -> None:
        self.meter = EstarWarpMeter(flow, input_scale)

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
        value = self.meter.add(pred)
        return {} if value is None else {"ewarp": value}


def _lpips_value(net: LPIPS, a: np.ndarray, b: np.ndarray) -> float:
    with torch.no_grad():
        return float(net(frame_tensor(a) * 2 - 1, frame_tensor(b) * 2 - 1)[0])


def _crop(frame: np.ndarray, crop: int) -> np.ndarray:
    return frame[crop:-crop, crop:-crop] if crop else frame


@dataclass
class Suite:
    """The metrics that run (in the order asked), their labels, and those unavailable with the reason."""

    names: list[str]
    labels: dict[str, str]
    unavailable: dict[str, str]
    y: bool = False
    crop: int = 0
    lpips_nets: dict[str, LPIPS] | None = None
    dists: DISTS | None = None
    spynet: Flow | None = None
    estar_flow: tuple[Flow, float] | None = None

    @property
    def temporal(self) -> list[str]:
        return [n for n in self.names if METRICS[n].temporal]

    def meters(self) -> list[Meter]:
        """Fresh meters for one clip."""
        y, crop, names = self.y, self.crop, set(self.names)
        out: list[Meter] = []

        def frame_scores(pred: np.ndarray, gt: np.ndarray | None) -> dict[str, float]:
            s: dict[str, float] = {}
            if gt is not None:
                if "psnr" in names:
                    s["psnr"] = psnr(pred, gt, crop, y)
                if "ssim" in names:
                    s["ssim"] = ssim(pred, gt, crop, y)
                for key, net in (self.lpips_nets or {}).items():
                    if key in ("lpips", "lpips_vgg"):
                        s[key] = _lpips_value(net, _crop(pred, crop), _crop(gt, crop))
                if self.dists is not None:
                    with torch.no_grad():
                        s["dists"] = float(self.dists(frame_tensor(_crop(pred, crop)), frame_tensor(_crop(gt, crop)))[0])
            if "niqe" in names:
                s["niqe"] = niqe(pred, crop)
            if "brisque" in names:
                s["brisque"] = brisque(pred, crop)
            return s

        out.append(_FrameMeter(frame_scores))
        if names & {"tof", "ewarp_gt"}:
            out.append(_TemporalGT(self.spynet, crop, names & {"tof", "ewarp_gt"}))
        if self.estar_flow is not None:
            out.append(_Estar(*self.estar_flow))
        if "tlp" in names:
            alex = (self.lpips_nets or {})["tlp"]
            out.append(_PairMeter(lambda p0, p1, g0, g1: {"tlp": TLP_SCALE * abs(
                _lpips_value(alex, _crop(p1, crop), _crop(p0, crop)) - _lpips_value(alex, _crop(g1, crop), _crop(g0, crop)))}))
        if "tdiff" in names:
            out.append(_PairMeter(lambda p0, p1, g0, g1: {"tdiff": frame_difference_error(
                _crop(p0, crop), _crop(p1, crop), _crop(g0, crop), _crop(g1, crop))}))
        return out


def _spynet() -> Flow:
    """SpyNet with the official weights (inside BasicVSR's checkpoint); missing weights make a metric unavailable."""
    try:
        return official_spynet()
    except VsrqError as exc:
        raise MissingWeights(str(exc)) from None


def build_suite(names: list[str], y: bool = False, crop: int = 0, estar_input_scale: float | None = None) -> Suite:
    """Load what ``names`` need; a metric whose weights are missing moves to ``unavailable`` with the reason.

    E*warp runs on RAFT (``raft-things.pth``, 20 iterations, QuantVSR's input scaling unless
    ``estar_input_scale`` says otherwise) when the file is present, else on SpyNet, labelled so.
    """
    suite = Suite([], {}, {}, y, crop)
    lpips: dict[str, LPIPS] = {}
    for name in names:
        info = METRICS[name]
        label = info.label
        try:
            if name in ("lpips", "lpips_vgg", "tlp"):
                lpips[name] = official_lpips("vgg" if name == "lpips_vgg" else "alex")
            elif name == "dists":
                suite.dists = official_dists()
            elif name == "brisque":
                live_model()
            elif name in ("tof", "ewarp_gt"):
                suite.spynet = suite.spynet or _spynet()
            elif name == "ewarp":
                try:
                    raft = load_raft(local_file(RAFT_FILE, RAFT_SOURCE), RAFT_ITERS)
                    suite.estar_flow = (flow_estimator(raft), 1 / 255 if estar_input_scale is None else estar_input_scale)
                except MissingWeights as missing:
                    suite.spynet = suite.spynet or _spynet()
                    suite.estar_flow = (suite.spynet, 1.0 if estar_input_scale is None else estar_input_scale)
                    label = "E*warp (SpyNet)"
                    suite.unavailable["ewarp (RAFT)"] = f"{missing}; SpyNet used instead"
        except MissingWeights as exc:
            suite.unavailable[name] = str(exc)
            continue
        except VsrqError as exc:  # a weights file of the wrong network, shape or a truncated one
            raise VsrqError(f"{name}: {exc}") from None
        suite.names.append(name)
        suite.labels[name] = label
    suite.lpips_nets = lpips or None
    return suite
