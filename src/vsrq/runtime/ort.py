"""onnxruntime execution of exported BasicVSR step graphs, driven like the PyTorch recurrence.

An :class:`OrtBasicVSR` is a :class:`~vsrq.runtime.upscale.WindowRunner`, so ``vsrq upscale
--runtime onnxruntime`` streams long videos in bounded memory exactly like the PyTorch path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vsrq.atomic import cache_dir, file_sha256
from vsrq.errors import VsrqError, cause, require
from vsrq.models.animesr import SCALE as ANIMESR_SCALE, padded_size
from vsrq.runtime import onnx_export
from vsrq.quant.controller import VideoBitController, video_complexity
from vsrq.runtime.onnx_export import export_graphs, graph_name
from vsrq.version import __version__


def _session(path: Path, threads: int | None):
    ort = require("onnxruntime", "export", "the onnxruntime runtime")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VsrqError(f"{path}: onnxruntime cannot load it ({cause(exc)})") from None


class OrtBasicVSR:
    """Runs an export (``<name>.onnx`` and the graphs it names) over windows of LR frames.

    Per window: SPyNet's flows (the flow graph), then, for a model with per-video bits (FG-VBA), the
    window's complexity from those frames and flows and the step graphs of the bit offset it picks (each
    pair loaded when first needed), then the backward and forward recurrences.
    """

    def __init__(self, path: str | Path, threads: int | None = None, entry=None) -> None:  # type: ignore[no-untyped-def]
        path = Path(path)
        if not path.is_file():
            raise VsrqError(f"{path}: no such ONNX graph")
        self.path, self.threads = path, threads
        entry = entry or _session(path, threads)  # open_graphs passes the session it read the family from
        meta = entry.get_modelmeta().custom_metadata_map
        if meta.get("vsrq_role") != "forward" or meta.get("vsrq_video_bits") != "0" or "vsrq_companions" not in meta:
            raise VsrqError(f"{path}: not the forward graph of a vsrq BasicVSR export (export again with this vsrq)")
        self.lr_size = tuple(json.loads(meta["vsrq_lr_size"]))
        self.num_feat = int(meta["vsrq_num_feat"])
        self.bidirectional = meta["vsrq_bidirectional"] == "True"
        self.quantized = meta.get("vsrq_quantized") == "True"
        self.manifest = json.loads(meta["vsrq_manifest"]) if "vsrq_manifest" in meta else None
        self.offsets = tuple(json.loads(meta["vsrq_video_bit_offsets"]))
        self.controller = (VideoBitController.from_manifest(json.loads(meta["vsrq_controller"]))
                           if "vsrq_controller" in meta else None)
        self._companions: dict[str, str] = json.loads(meta["vsrq_companions"])
        self.flow_session = self._companion(graph_name(path, "flow"))
        self._steps: dict[int, tuple] = {}
        backward = self._companion(graph_name(path, "backward")) if self.bidirectional else None
        self._steps[0] = (entry, backward)
        self.last_offset = 0

    def _companion(self, file: Path):  # type: ignore[no-untyped-def]
        if not file.is_file():
            raise VsrqError(f"{file}: a graph of this export is missing beside {self.path.name}")
        expected = self._companions.get(file.name)
        if expected is None or file_sha256(file) != expected:
            raise VsrqError(f"{file} is not the graph exported with {self.path.name}; export again")
        return _session(file, self.threads)

    def steps(self, offset: int):  # type: ignore[no-untyped-def]
        """The (forward, backward) sessions at a video bit offset, loaded on first use."""
        if offset not in self._steps:
            backward = self._companion(graph_name(self.path, "backward", offset)) if self.bidirectional else None
            self._steps[offset] = (self._companion(graph_name(self.path, "forward", offset)), backward)
        return self._steps[offset]

    def _flow(self, ref: np.ndarray, supp: np.ndarray) -> np.ndarray:
        return self.flow_session.run(None, {"x_ref": ref, "x_supp": supp})[0]

    def video_bit_offset(self, x: np.ndarray, forward: dict[int, np.ndarray], backward: dict[int, np.ndarray]) -> int:
        """FG-VBA's offset for a window (T, 3, h, w) from its flows, as the simulation's controller picks it."""
        assert self.controller is not None
        t = len(x)
        flows = [torch.from_numpy(np.concatenate([d[i] for i in idx]))[None]
                 for d, idx in ((forward, range(1, t)), (backward, range(t - 1)))]
        with torch.no_grad():
            complexity = video_complexity(torch.from_numpy(x)[None], flows, self.controller.gamma, self.controller.lam)
            return int(self.controller.video_bits(complexity).item())

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        x = lr[0].numpy().astype(np.float32)  # (T, 3, h, w)
        t, _, h, w = x.shape
        if (h, w) != self.lr_size:
            raise VsrqError(f"the graph was exported for {self.lr_size[1]}x{self.lr_size[0]} LR frames, "
                            f"the input is {w}x{h}: export again with --size {h}x{w}")
        zeros = np.zeros((1, self.num_feat, h, w), dtype=np.float32)
        still = np.zeros((1, 2, h, w), dtype=np.float32)  # beside a zero state the flow is irrelevant
        frames = [x[i : i + 1] for i in range(t)]
        forward_flows: dict[int, np.ndarray] = {}  # i: frame i-1's features onto frame i
        backward_flows: dict[int, np.ndarray] = {}  # i: frame i+1's features onto frame i
        offset = 0
        if self.controller is not None:  # the whole window's motion, both ways, as the simulation analyses it
            for i in range(t - 1):
                forward_flows[i + 1] = self._flow(frames[i + 1], frames[i])
                backward_flows[i] = self._flow(frames[i], frames[i + 1])
            offset = self.video_bit_offset(x, forward_flows, backward_flows)
        self.last_offset = offset
        forward_session, backward_session = self.steps(offset)
        back: dict[int, np.ndarray] = {}
        if backward_session is not None:
            state = zeros
            for i in range(t - 1, output_frames.start - 1, -1):
                flow = still if i == t - 1 else backward_flows.pop(i, None)
                if flow is None:
                    flow = self._flow(frames[i], frames[i + 1])
                (state,) = backward_session.run(None, {"x_t": frames[i], "flow": flow, "h_next": state})
                if i in output_frames:
                    back[i] = state
        outputs = []
        state = zeros
        for i in range(output_frames.stop):
            flow = still if i == 0 else forward_flows.pop(i, None)
            if flow is None:
                flow = self._flow(frames[i], frames[i - 1])
            feeds = {"x_t": frames[i], "flow": flow, "g_prev": state}
            if self.bidirectional:
                feeds["h_t"] = back.pop(i, zeros)
            state, y = forward_session.run(None, feeds)
            if i in output_frames:
                outputs.append(y)
        return torch.from_numpy(np.concatenate(outputs)[None])


class OrtAnimeSR:
    """Runs AnimeSR's exported step graph over windows of LR frames, as :meth:`AnimeSR.forward` does: frames
    clamped and replicate-padded, each step fed the previous, current and next frame, the previous SR frame and
    the state."""

    def __init__(self, path: str | Path, threads: int | None = None, entry=None) -> None:  # type: ignore[no-untyped-def]
        path = Path(path)
        if not path.is_file():
            raise VsrqError(f"{path}: no such ONNX graph")
        self.session = entry or _session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("vsrq_family") != "animesr" or meta.get("vsrq_role") != "step":
            raise VsrqError(f"{path}: not the step graph of a vsrq AnimeSR export (export again with this vsrq)")
        self.lr_size = tuple(json.loads(meta["vsrq_lr_size"]))
        self.num_feat = int(meta["vsrq_num_feat"])
        self.quantized = meta.get("vsrq_quantized") == "True"
        self.manifest = json.loads(meta["vsrq_manifest"]) if "vsrq_manifest" in meta else None

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        x = np.clip(lr[0].numpy().astype(np.float32), 0.0, 1.0)  # (T, 3, h, w)
        t, _, h, w = x.shape
        if (h, w) != self.lr_size:
            raise VsrqError(f"the graph was exported for {self.lr_size[1]}x{self.lr_size[0]} LR frames, "
                            f"the input is {w}x{h}: export again with --size {h}x{w}")
        hp, wp = padded_size((h, w))
        x = np.pad(x, ((0, 0), (0, 0), (0, hp - h), (0, wp - w)), mode="edge")
        scale = ANIMESR_SCALE
        sr = np.zeros((1, 3, scale * hp, scale * wp), np.float32)
        state = np.zeros((1, self.num_feat, hp, wp), np.float32)
        outputs = []
        for i in range(output_frames.stop):
            frames = np.concatenate((x[max(i - 1, 0)], x[i], x[min(i + 1, t - 1)]))[None]
            sr, state = self.session.run(None, {"frames": frames, "sr": sr, "state": state})
            if i >= output_frames.start:
                outputs.append(sr[:, :, : scale * h, : scale * w])
        return torch.from_numpy(np.concatenate(outputs)[None])


def open_graphs(path: str | Path, threads: int | None = None) -> OrtBasicVSR | OrtAnimeSR:
    """The runner of an export, by the family its entry graph records (the graph is loaded once)."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"{path}: no such ONNX graph")
    entry = _session(path, threads)
    family = entry.get_modelmeta().custom_metadata_map.get("vsrq_family")
    return (OrtAnimeSR if family == "animesr" else OrtBasicVSR)(path, threads, entry)


class OrtFromModel:
    """Exports a (quantized) model for each LR size it meets, then runs it with onnxruntime.

    Lets ``vsrq upscale --runtime onnxruntime --model model.vsrq`` take clips of any size. With a
    ``folder`` that persists (:func:`graph_cache`), graphs exported once are reused by later runs; a
    size's graphs appear there whole or not at all. ``out_ranges`` is called only when a size must be
    exported (measuring output ranges runs the model on its calibration clips).
    """

    def __init__(self, model: torch.nn.Module, out_ranges: Callable[[], dict[str, tuple[float, float]] | None],
                 folder: Path, manifest: dict | None = None, threads: int | None = None) -> None:
        self.model, self.out_ranges, self.folder, self.manifest, self.threads = model, out_ranges, folder, manifest, threads
        self.runners: dict[tuple[int, int], OrtBasicVSR | OrtAnimeSR] = {}
        self._ranges: dict[str, tuple[float, float]] | None = None
        self._measured = False

    def _export(self, size: tuple[int, int]) -> Path:
        path = self.folder / f"model_{size[0]}x{size[1]}.onnx"
        if path.is_file():
            return path
        if not self._measured:
            self._ranges, self._measured = self.out_ranges(), True
        export_graphs(self.model, path, size, self._ranges, self.manifest, replace=False)  # whole or not at all
        return path

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        size = tuple(lr.shape[-2:])
        if size not in self.runners:
            self.runners[size] = open_graphs(self._export(size), self.threads)
        return self.runners[size](lr, output_frames)


def graph_cache(checkpoint: Path) -> Path:
    """Where the graphs of a checkpoint file are kept between runs: ``$VSRQ_CACHE`` (default
    ``~/.cache/vsrq``) / ``onnx`` / a SHA-256 of the file and of the exporter's source, and vsrq's version,
    so an edited checkpoint or a changed exporter never reuses stale graphs."""
    digest = hashlib.sha256()
    file_sha256(checkpoint, digest)
    digest.update(Path(onnx_export.__file__).read_bytes())  # the exporter that made them
    digest.update(b"vnni" if onnx_export.has_vnni() else b"no-vnni")  # `auto` weight storage depends on the CPU
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:24]}-{__version__}"
