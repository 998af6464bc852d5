"""Calibration on a GPU: the same recipe on CUDA gives the CPU's model, back on the CPU.

The CUDA checks skip where torch sees no GPU (CI); the error path runs everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import smooth_frames
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model

QUIET = dict(log=lambda s: None, show_progress=False)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _clip(seed: int = 7) -> torch.Tensor:
    return torch.from_numpy(smooth_frames(4, 64, 64, seed=seed)).float().div(255).permute(0, 3, 1, 2)[None]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.fault
def test_cuda_calibration_without_a_gpu_is_one_clear_error():
    with pytest.raises(VsrqError, match="sees no CUDA GPU"):
        quantize_model(_loaded(), QuantConfig(method="minmax"), _synthetic_calib(), device="cuda", **QUIET)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method, options", [
    ("dbdc", {}),
    ("qbasicvsr", {}),
    ("percentile+ft", {}),
    ("quantvsr", {"batch": 2, "epochs": 1}),
    ("svdquant", {}),
    ("brecq", {"iters": 20, "samples": 1}),
    ("qdrop", {"iters": 20, "samples": 1}),  # random drops drawn on the CPU for either device
    ("tarq", {"epochs": 1, "batch": 2, "round_epochs": 1}),
])
def test_cuda_calibration_matches_the_cpu(method: str, options: dict, tmp_path: Path):
    """Same clips and seed on both devices: the float maths differ only in rounding (a few codes
    flip), so the two quantized models are equally far from the float model."""
    cfg = QuantConfig(method=method, wbits=4, abits=4, options=options)
    models = {dev: quantize_model(_loaded(num_feat=32), cfg, _synthetic_calib(2, 4), device=dev, **QUIET)
              for dev in ("cpu", "cuda")}
    assert all(t.device.type == "cpu" for t in [*models["cuda"].parameters(), *models["cuda"].buffers()])
    assert models["cuda"].manifest["notes"]["calibrated_on"] == torch.cuda.get_device_name(0)
    x = _clip()
    with torch.no_grad():
        y_fp = _loaded(num_feat=32).model(x)
        y = {dev: m(x) for dev, m in models.items()}
    err = {dev: float((out - y_fp).pow(2).mean()) for dev, out in y.items()}
    device_gap = float((y["cuda"] - y["cpu"]).pow(2).mean())
    print(method, err, device_gap)
    assert abs(err["cuda"] - err["cpu"]) < 0.2 * err["cpu"]  # equally good
    assert device_gap < 2 * err["cpu"]  # and no stranger to it (fine-tuned runs drift apart from the first flipped code)
    reloaded = checkpoint.load(checkpoint.save(models["cuda"], tmp_path / "m.vsrq"))
    with torch.no_grad():
        assert torch.equal(reloaded(x), y["cuda"])
