"""onnxruntime execution of exported BasicVSR step graphs, driven like the PyTorch recurrence.

An :class:`OrtBasicVSR` is a :class:`~vsrq.runtime.upscale.WindowRunner`, so ``vsrq upscale
--runtime onnxruntime`` streams long videos in bounded memory exactly like the PyTorch path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vsrq.atomic import file_sha256
from vsrq.errors import VsrqError, require
from vsrq.runtime import onnx_export
from vsrq.runtime.onnx_export import export_basicvsr
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
        raise VsrqError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


class OrtBasicVSR:
    """Runs ``<name>.onnx`` (+ ``<name>.backward.onnx``) over windows of LR frames."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise VsrqError(f"{path}: no such ONNX graph")
        self.forward_session = _session(path, threads)
        meta = self.forward_session.get_modelmeta().custom_metadata_map
        if meta.get("vsrq_role") != "forward":
            raise VsrqError(f"{path}: not a vsrq BasicVSR export (no forward-step metadata)")
        self.lr_size = tuple(json.loads(meta["vsrq_lr_size"]))
        self.num_feat = int(meta["vsrq_num_feat"])
        self.bidirectional = meta["vsrq_bidirectional"] == "True"
        self.quantized = meta.get("vsrq_quantized") == "True"
        self.manifest = json.loads(meta["vsrq_manifest"]) if "vsrq_manifest" in meta else None
        self.backward_session = None
        if self.bidirectional:
            companion = path.with_name(path.stem + ".backward.onnx")
            if not companion.is_file():
                raise VsrqError(f"{companion}: the backward-step graph is missing beside {path.name}")
            expected = json.loads(meta.get("vsrq_companions", "{}")).get(companion.name)
            if expected is not None and file_sha256(companion) != expected:
                raise VsrqError(f"{companion} is not the backward graph exported with {path.name}; export again")
            self.backward_session = _session(companion, threads)

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        x = lr[0].numpy().astype(np.float32)  # (T, 3, h, w)
        t, _, h, w = x.shape
        if (h, w) != self.lr_size:
            raise VsrqError(f"the graph was exported for {self.lr_size[1]}x{self.lr_size[0]} LR frames, "
                            f"the input is {w}x{h}: export again with --size {h}x{w}")
        zeros = np.zeros((1, self.num_feat, h, w), dtype=np.float32)
        frames = [x[i : i + 1] for i in range(t)]
        back: dict[int, np.ndarray] = {}
        if self.backward_session is not None:
            state = zeros
            for i in range(t - 1, output_frames.start - 1, -1):
                nxt = frames[i + 1] if i < t - 1 else frames[i]  # with a zero state the flow is irrelevant
                (state,) = self.backward_session.run(None, {"x_t": frames[i], "x_next": nxt, "h_next": state})
                if i in output_frames:
                    back[i] = state
        outputs = []
        state = zeros
        for i in range(output_frames.stop):
            feeds = {"x_t": frames[i], "x_prev": frames[i - 1] if i > 0 else frames[i], "g_prev": state}
            if self.bidirectional:
                feeds["h_t"] = back.get(i, zeros)
            state, y = self.forward_session.run(None, feeds)
            if i in output_frames:
                outputs.append(y)
        return torch.from_numpy(np.concatenate(outputs)[None])


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
        self.runners: dict[tuple[int, int], OrtBasicVSR] = {}
        self._ranges: dict[str, tuple[float, float]] | None = None
        self._measured = False

    def _export(self, size: tuple[int, int]) -> Path:
        path = self.folder / f"model_{size[0]}x{size[1]}.onnx"
        if path.is_file():
            return path
        if not self._measured:
            self._ranges, self._measured = self.out_ranges(), True
        export_basicvsr(self.model, path, size, self._ranges, self.manifest, replace=False)  # whole or not at all
        return path

    def __call__(self, lr: torch.Tensor, output_frames: range) -> torch.Tensor:
        size = tuple(lr.shape[-2:])
        if size not in self.runners:
            self.runners[size] = OrtBasicVSR(self._export(size), self.threads)
        return self.runners[size](lr, output_frames)


def graph_cache(checkpoint: Path) -> Path:
    """Where the graphs of a checkpoint file are kept between runs: ``$VSRQ_CACHE`` (default
    ``~/.cache/vsrq``) / ``onnx`` / a SHA-256 of the file and of the exporter's source, and vsrq's version,
    so an edited checkpoint or a changed exporter never reuses stale graphs."""
    digest = hashlib.sha256()
    file_sha256(checkpoint, digest)
    digest.update(Path(onnx_export.__file__).read_bytes())  # the exporter that made them
    digest.update(b"vnni" if onnx_export.has_vnni() else b"no-vnni")  # `auto` weight storage depends on the CPU
    root = Path(os.environ.get("VSRQ_CACHE") or Path.home() / ".cache" / "vsrq")
    return root / "onnx" / f"{digest.hexdigest()[:24]}-{__version__}"
