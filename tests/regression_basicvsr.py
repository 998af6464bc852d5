"""Fixed, seeded quantization runs on the official BasicVSR whose bytes must never change by accident.

``python tests/regression_basicvsr.py --record`` writes ``tests/fixtures/regression_basicvsr.json``: for
MinMax, QBasicVSR, QuantVSR (with the activation clip search) and SVDQuant, each checkpoint tensor's
SHA-256 and the SHA-256 of the loaded checkpoint's output on a fixed clip. ``test_regression.py`` runs
the same jobs and compares. First recorded before the model-host refactor, on the code of that time. The fixture
holds one record per environment (torch build, vector unit, AMX): oneDNN's AMX kernels round differently, so a
record made without AMX does not hold with it; ``--record`` adds or replaces this environment's record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

import vsrq
from vsrq.config import CalibConfig, QuantConfig
from vsrq.devices import cpu_flags

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "regression_basicvsr.json"
MODEL = "basicvsr-vimeo-bi"
CALIB = CalibConfig(clips=2, frames=4, crop=64)
JOBS: dict[str, QuantConfig] = {
    "minmax-w4a4": QuantConfig(method="minmax", wbits=4, abits=4, calib=CALIB),
    "qbasicvsr-w4a4": QuantConfig(method="qbasicvsr", wbits=4, abits=4, calib=CALIB),
    "quantvsr-w4a4-clip": QuantConfig(method="quantvsr", wbits=4, abits=4, calib=CALIB, options={"act_clip": True}),
    "svdquant-w4a4": QuantConfig(method="svdquant", wbits=4, abits=4, calib=CALIB),
}


def probe_clip() -> torch.Tensor:
    """(1, 5, 3, 64, 72) frames of a drifting pattern: real motion for the flow network, no files needed."""
    yy, xx = np.mgrid[0:64, 0:72].astype(np.float64)
    frames = [np.stack([0.5 + 0.4 * np.sin((xx + 1.5 * i) / (6 + c)) * np.cos((yy - 0.8 * i) / (8 + c))
                        for c in range(3)]) for i in range(5)]
    return torch.from_numpy(np.stack(frames)).float()[None]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def run_job(config: QuantConfig) -> dict:
    """Quantize, save, load, run on the probe clip; the hashes of everything that must not drift. Two threads, as
    recorded (a reduction split differently rounds differently); the caller's count is restored after, since a
    pytest worker left at two threads beside another oversubscribes the cores for every test after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        qm = vsrq.quantize(MODEL, config, log=lambda _s: None, show_progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = vsrq.save(qm, Path(tmp) / "m.vsrq")
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: digest(f.get_tensor(k)) for k in sorted(f.keys())}
            loaded = vsrq.load(path)
        with torch.no_grad():
            output = loaded(probe_clip())
    finally:
        torch.set_num_threads(before)
    return {"tensors": tensors, "output": digest(output)}


def environment() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "amx": "amx_tile" in cpu_flags()}


def recorded_jobs() -> dict | None:
    """This environment's recorded jobs, or None where none was recorded."""
    records = json.loads(FIXTURE.read_text())["records"]
    return next((r["jobs"] for r in records if r["environment"] == environment()), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the fixture (otherwise print the hashes)")
    args = parser.parse_args()
    result = {"environment": environment(), "jobs": {name: run_job(cfg) for name, cfg in JOBS.items()}}
    if args.record:
        others = [r for r in json.loads(FIXTURE.read_text())["records"] if r["environment"] != result["environment"]]
        FIXTURE.write_text(json.dumps({"records": others + [result]}, indent=1, sort_keys=True) + "\n")
    json.dump({k: v["output"] for k, v in result["jobs"].items()}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
