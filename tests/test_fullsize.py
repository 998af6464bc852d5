"""The full-size MGLD-VSR UNet (random weights) quantized by QuantVSR and run once on a CPU, in bounded memory.

Swap and forward only, as the issue sizes it: no float teacher copy (``inplace``), no refinement; weights
frozen to integer codes after calibration, as a loaded checkpoint holds them. Runs in a subprocess so its
peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, resource, time
import torch
import vsrq
from vsrq import checkpoint
from vsrq.config import QuantConfig
from vsrq.data.captured import CapturedInputs
from vsrq.models.mgldvsr.host import build_denoiser

torch.manual_seed(0)
start = time.monotonic()
model = build_denoiser("full").eval()
with torch.no_grad():
    for p in model.parameters():
        if p.dim() > 1 and not p.any():  # the ldm code starts some output layers at zero: give them signal
            p.normal_(0.0, 0.02)
g = torch.Generator().manual_seed(1)
frames, side = 5, 16  # a 5 x 4 x 16 x 16 latent
lq = torch.randn(frames, 4, side, side, generator=g)
item = {"x": lq + torch.randn(frames, 4, side, side, generator=g), "timesteps": torch.full((frames,), 999),
        "context": torch.randn(1, 77, 1024, generator=g) * 0.1, "lq_latent": lq}
calib = CapturedInputs.from_items([item], ["item0"], "one synthetic denoiser input")
config = QuantConfig(method="quantvsr", wbits=4, abits=4, options={"refine": False, "lba": False})
qm = vsrq.quantize(model, config, calib, log=lambda s: None, show_progress=False, inplace=True).freeze()
layers = qm.layers()
with torch.no_grad():
    out = qm(item["x"], item["timesteps"], item["context"], item["lq_latent"])
from vsrq.methods.pipeline import skeleton
from vsrq.models.host import HOSTS
with torch.device("meta"):
    empty = build_denoiser("full")
sized = checkpoint.tensor_nbytes(skeleton(empty, HOSTS["mgldvsr"], config, {n: l.rank for n, l in layers.items()}))
kinds = {}
for layer in layers.values():
    kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
print(json.dumps({"layers": len(layers), "kinds": kinds, "ranks": sorted({l.rank for l in layers.values()}),
                  "checkpoint_mb": checkpoint.tensor_nbytes(qm) / 1e6, "meta_sized_mb": sized / 1e6,
                  "branch_mb_fp32": sum(4 * (l.lowrank_up.numel() + l.lowrank_down.numel())
                                        for l in layers.values() if l.rank) / 1e6,
                  "frozen": all(l.weight is None for l in layers.values()),
                  "finite": bool(torch.isfinite(out).all()), "shape": list(out.shape), "std": float(out.std()),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds": time.monotonic() - start}))
'''


@pytest.mark.slow
def test_full_size_unet_quantized_by_quantvsr_runs_forward_under_8_gb():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(report)
    assert report["layers"] == 351 and report["kinds"] == {"linear": 219, "conv2d": 130, "conv3d": 2}
    assert report["frozen"] and report["finite"] and report["shape"] == [5, 4, 16, 16] and report["std"] > 0
    ranks = report["ranks"]
    assert min(ranks) >= 16 and max(ranks) <= 64 and all(r % 8 == 0 for r in ranks), ranks
    assert report["peak_rss_gb"] < 8.0, report["peak_rss_gb"]
    assert report["meta_sized_mb"] == report["checkpoint_mb"]  # sizing on the meta device needs no calibration
