"""Where the time goes, part by part: the official BasicVSR at LR 180x320 on torch-fp32 and on the torch-int8
runtime (a deploy checkpoint), wall time per output frame of each weighted child of the network (the trunks,
SPyNet) and of its two steps the runtime compiles whole (``align``: warp and concatenation; ``reconstruct``: the
HR tail from fusion to the bilinear base), the rest being the Python loop's own ops.

Steady state: each model runs the clip once to compile and warm up, then once timed. Uses the checkpoints of
`bench/deploy.py` (the same cache). Writes ``bench/results/profile_int8.{json,md}``.

    python bench/profile_int8.py --backends torch-fp32 pt-int8-w8a8 pt-int8-quantvsr-w4a4-bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from deploy import BACKENDS, artifacts, frames_for, identity, lowered, needed  # noqa: E402

NAME = "profile_int8"


STEPS = ("align", "reconstruct")  # timed whole (compiled whole on torch-int8): the tail's convs run inside reconstruct
TAIL = ("fusion", "upconv1", "upconv2", "conv_hr", "conv_last")


class Timed(nn.Module):
    """A child or step of the network whose calls add their wall time to ``spent[name]``."""

    def __init__(self, name: str, inner: Callable[..., torch.Tensor], spent: dict[str, float]) -> None:
        super().__init__()
        self.name, self.inner, self.spent = name, inner, spent

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.spent[self.name] = self.spent.get(self.name, 0.0) + time.perf_counter() - start
        return out


def profile(backend: str, art: dict[str, Path]) -> dict:
    from vsrq import api

    key = BACKENDS[backend][3]
    model = api.load(art[key] if key else "basicvsr-vimeo-bi")
    if backend.startswith("pt-int8"):
        model = lowered(backend, model, art[key])
    base = model.base if hasattr(model, "base") else model
    spent: dict[str, float] = {}
    for name, child in list(base.named_children()):
        weighted = next(child.parameters(), None) is not None or next(child.buffers(), None) is not None
        if weighted and name not in TAIL:
            setattr(base, name, Timed(name, child, spent))
    for name in STEPS:  # an instance attribute over the method, as the runtime's compiled step is
        base.__dict__[name] = Timed(name, getattr(base, name), spent).forward
    x = frames_for("180x320")
    with torch.inference_mode():
        model(x)  # compile, warm up
        spent.clear()
        start = time.perf_counter()
        model(x)
        total = time.perf_counter() - start
    per_frame = {k: round(v * 1000 / x.shape[1], 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    rest = round(total * 1000 / x.shape[1] - sum(per_frame.values()), 1)
    return {"backend": backend, **identity(backend), "lr_size": "180x320", "ms_per_frame": round(total * 1000 / x.shape[1], 1),
            "modules_ms": per_frame, "rest_ms": rest, "threads": torch.get_num_threads()}


def main() -> int:
    from harness import git_commit

    from vsrq.benchmark import today

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["torch-fp32", "pt-int8-w8a8"],
                        choices=[b for b in BACKENDS if b.startswith(("torch-fp32", "pt-int8"))])
    args = parser.parse_args()
    art = artifacts(needed(args.backends))
    rows = []
    for backend in args.backends:
        rows.append({**profile(backend, art), "commit": git_commit(), "date": today()})
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(rows, indent=1) + "\n")
    names = list(dict.fromkeys(k for r in rows for k in r["modules_ms"]))
    lines = [f"# {NAME}", "", "BasicVSR at LR 180x320, ms per output frame by part (steady state, "
             f"{rows[0]['threads']} threads, {rows[0]['date']}, commit {rows[0]['commit']}); *rest*: the Python loop's own "
             "ops; *align*: warp and concatenation before each trunk; *reconstruct*: the HR tail from fusion to the "
             "bilinear base.", "",
             "| module | " + " | ".join(r["backend"] for r in rows) + " |", "| --- |" + " ---: |" * len(rows)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['modules_ms'].get(name, 0):.0f}" for r in rows) + " |")
    lines.append("| *rest* | " + " | ".join(f"{r['rest_ms']:.0f}" for r in rows) + " |")
    lines.append("| **total** | " + " | ".join(f"{r['ms_per_frame']:.0f}" for r in rows) + " |")
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
