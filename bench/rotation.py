"""Hadamard rotation on the CPU: the FWHT against the dense product it builds, beside the conv it feeds.

A QuantVSR layer rotates its input's channels before the low-bit conv. At BasicVSR's 64 channels
(activations 2x64x64x64, a 3x3 conv 64->64) this times, side by side in one run and on the same
tensor: the FWHT passes, the dense 1x1-conv product (what ``HadamardRotation.apply`` uses up to
``DENSE_MAX`` channels) and the conv itself. Writes ``bench/results/rotation.json`` and ``.md``.

    python bench/rotation.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from harness import git_commit  # noqa: E402

from vsrq.benchmark import today  # noqa: E402
from vsrq.quant.rotation import HadamardRotation  # noqa: E402


def best_ms(fns: dict[str, Callable[[], object]], rounds: int = 100) -> dict[str, float]:
    """The fastest call of each function in ms, the functions taking turns each round (so a noisy
    moment on a shared machine hits all of them alike), after three warm-up rounds."""
    best = {name: float("inf") for name in fns}
    for r in range(rounds + 3):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= 3:
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
    return best


def main() -> int:
    torch.manual_seed(0)
    channels = 64
    x = torch.randn(2, channels, 64, 64)
    weight = torch.randn(channels, channels, 3, 3)
    rot = HadamardRotation(channels, seed=0)
    assert torch.allclose(rot.apply(x, 1), rot.fast_apply(x, 1), atol=1e-5)
    with torch.inference_mode():
        row = {
            "channels": channels, "shape": list(x.shape), "threads": torch.get_num_threads(),
            **{k: round(v, 3) for k, v in best_ms({
                "fwht_ms": lambda: rot.fast_apply(x, 1),
                "dense_ms": lambda: rot.apply(x, 1),
                "conv3x3_ms": lambda: F.conv2d(x, weight, padding=1),
            }).items()},
            "commit": git_commit(), "date": today(),
        }
    row["fwht_over_dense"] = round(row["fwht_ms"] / row["dense_ms"], 2)
    (RESULTS / "rotation.json").write_text(json.dumps([row], indent=1) + "\n")
    (RESULTS / "rotation.md").write_text(
        "# rotation\n\n"
        f"Hadamard rotation over {channels} channels of a {tuple(x.shape)} activation, {row['threads']} threads, "
        f"best of 100 interleaved rounds; commit {row['commit']}, {row['date']}.\n\n"
        "| FWHT (ms) | dense product (ms) | 3x3 conv it feeds (ms) | FWHT / dense |\n| ---: | ---: | ---: | ---: |\n"
        f"| {row['fwht_ms']:.2f} | {row['dense_ms']:.2f} | {row['conv3x3_ms']:.2f} | {row['fwht_over_dense']:.1f}x |\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
