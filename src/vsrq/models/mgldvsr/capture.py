"""Capture the denoiser's inputs from the float sampler on LR clips: the calibration data of MGLD-VSR models.

The sampler runs each calibration window of ``num_frames`` LR frames as ``vsrq upscale`` would (seeded);
a forward pre-hook on the denoiser records its inputs ``(x_t, t, text context, LQ condition)`` at K of the
sampler's N steps, at equal intervals of the respaced chain (QuantVSR: 5 of 50), every tile of those steps.
Items stream to float16 shards on disk (:class:`~vsrq.data.captured.CaptureWriter`), so RAM holds one shard,
not the capture. A capture is keyed by everything it depends on (the model's weights, the sampler settings,
K, the clips' hash, the seed): a later run with the same key reuses it, any other key captures afresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from vsrq.atomic import cache_dir
from vsrq.data.captured import CapturedInputs, CaptureWriter
from vsrq.data.clips import CalibrationSet
from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.pipeline import as_upscaler
from vsrq.models.mgldvsr.sampler import respaced_timesteps
from vsrq.progress import progress

CAPTURE_STEPS = 5  # QuantVSR: 5 points at equal intervals of the 50 sampling steps


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def captured_timesteps(steps: int, start_t: int, k: int) -> list[int]:
    """K of the sampler's N respaced timesteps, at equal intervals of the chain (both ends included)."""
    chain = respaced_timesteps(steps, start_t).tolist()
    k = min(k, len(chain))
    picks = np.unique(np.round(np.linspace(0, len(chain) - 1, k)).astype(int))
    return sorted({int(chain[i]) for i in picks})


def capture_denoiser_inputs(model: nn.Module, calib: CalibrationSet, steps: int = CAPTURE_STEPS, seed: int = 0,
                            folder: str | Path | None = None, shard_items: int = 16, flow: str = "spynet",
                            log: Callable[[str], None] = print, show_progress: bool = True) -> CapturedInputs:
    """Denoiser inputs of ``model`` (a whole MGLD-VSR model) on every ``num_frames`` window of the clips."""
    upscaler = as_upscaler(model, flow)
    if upscaler is None:
        raise VsrqError(f"{type(model).__name__} has no sampler to capture from: pass captured denoiser inputs")
    sampler = upscaler.sampler
    n = upscaler.num_frames
    if calib.shortest < n:
        raise VsrqError(f"calibration clips of {calib.shortest} frames are shorter than the model's {n}-frame window")
    chosen = captured_timesteps(sampler.steps, sampler.start_t, steps)
    facts = {"model_sha256": weights_sha256(model), "sampler": asdict(sampler), "capture_timesteps": chosen,
             "calibration_sha256": calib.sha256, "seed": seed, "num_frames": n}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(folder) if folder is not None else cache_dir() / "captures" / key
    if (folder / "index.json").is_file():
        log(f"reusing the captured denoiser inputs in {folder}")
        return CapturedInputs.from_folder(folder, expect=facts)
    windows = [(c, s) for c, clip in enumerate(calib.clips) for s in range(0, clip.shape[0] - n + 1, n)]
    description = (f"denoiser inputs at t in {chosen} ({len(chosen)} of {sampler.steps} steps), {len(windows)} "
                   f"windows of {n} frames from: {calib.description}")
    denoiser = model.denoiser
    with CaptureWriter(folder, facts, description, shard_items) as writer:
        current = {"name": ""}

        def record(_module: nn.Module, args: tuple) -> None:
            x, t, context, lq = args[:4]
            if int(t.reshape(-1)[0]) in chosen:
                writer.add(f"{current['name']}@t{int(t.reshape(-1)[0])}",
                           {"x": x, "timesteps": t, "context": context, "lq_latent": lq})

        hook = denoiser.register_forward_pre_hook(record)
        try:
            with progress(total=len(windows), desc="capture", unit="window", enabled=show_progress) as bar:
                for c, s in windows:
                    current["name"] = f"{calib.names[c]}[{s}:{s + n}]"
                    upscaler.upscale(calib.clips[c][s : s + n], seed)
                    bar.update(1)
        finally:
            hook.remove()
        captured = writer.close()
    log(f"captured {len(captured)} denoiser inputs (at most {writer.peak_buffered} in memory at once) in {folder}")
    return captured
