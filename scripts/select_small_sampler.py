"""Cross-validate the choice of ``mgldvsr-small``'s sampler over the four Vid4 clips (no retraining).

The shipped 2-step DDIM sampler was picked by a sweep scored on the same Vid4 centre crops it is
reported on. This script scores the sweep's candidates per clip (Y-PSNR gain over bicubic; first
5 frames, 192x192 HR centre crop, BI x4, seed 0, as ``train_mgldvsr.py --member small`` scores), then runs
leave-one-clip-out selection: each clip is scored with the candidate that is best on the other
three. The mean of those four held-out gains is the honest estimate of "pick a sampler on Vid4,
then report Vid4". The facts go to ``train_mgldvsr_small.json`` under ``sampler_cross_validation``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/select_small_sampler.py
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from vsrq.data.datasets import find_dataset
from vsrq.errors import VsrqError
from vsrq.models.catalog import load_model
from vsrq.models.mgldvsr.small import leave_one_clip_out, score_crops, vid4_crops

# the sweep's candidates (``sampler_sweep_gain_db`` in the JSON), as overrides of SmallConfig's sampler
CANDIDATES: dict[str, dict] = {
    "steps=1": {"steps": 1},
    "steps=2": {"steps": 2},
    "steps=3": {"steps": 3},
    "steps=4": {"steps": 4},
    "steps=10": {"steps": 10},
    "steps=4 eta=1": {"steps": 4, "eta": 1.0},
    "steps=1 adain": {"steps": 1, "color_fix": True},
    "steps=2 guidance 10 (SpyNet)": {"steps": 2, "guidance_scale": 10.0},
}
FACTS = Path(__file__).with_name("train_mgldvsr_small.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vid4", type=Path, help="Vid4 ground-truth folder (default: found like the tests find it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=FACTS, help="JSON file to add the facts to")
    args = p.parse_args()
    torch.set_num_threads(1)
    gt_root = args.vid4 or find_dataset("vid4")
    if gt_root is None:
        raise VsrqError("Vid4 ground truth not found: pass --vid4")
    model = load_model("mgldvsr-small").model.eval()
    shipped = model.config.sampler
    configs = {name: replace(shipped, **over) for name, over in CANDIDATES.items()}
    shipped_name = next(n for n, c in configs.items() if c == shipped)
    flow = None
    if any(c.guidance_scale > 0 for c in configs.values()):
        from vsrq.models.mgldvsr.pipeline import spynet_flow

        flow = spynet_flow()
    crops = vid4_crops(gt_root)
    start = time.monotonic()
    gains: dict[str, dict[str, float]] = {}
    for name, cfg in configs.items():
        scores = score_crops(model, crops, args.seed, cfg, flow)
        gains[name] = {clip: s["model"] - s["bicubic"] for clip, s in scores.items()}
        print(f"{name:30s} " + "  ".join(f"{c} {g:+.3f}" for c, g in gains[name].items())
              + f"  mean {np.mean(list(gains[name].values())):+.3f}", flush=True)
    folds = leave_one_clip_out(gains)
    mean = {n: float(np.mean(list(g.values()))) for n, g in gains.items()}
    in_sample = max(mean, key=lambda n: mean[n])
    cv = float(np.mean([f["held_out_gain"] for f in folds.values()]))
    facts = {
        "method": "leave-one-clip-out over the 4 Vid4 clips: each clip scored with the candidate of best mean "
                  "gain on the other 3; cv_gain_db is the mean of the 4 held-out gains",
        "crops": "first 5 frames, 192x192 HR centre crop, BI x4, Y-PSNR gain over bicubic (dB), seed "
                 f"{args.seed}, 1 thread",
        "candidates": {n: {k: v for k, v in asdict(c).items() if v != getattr(shipped, k)}
                       for n, c in configs.items()},
        "shipped": shipped_name,
        "gain_db": gains,
        "mean_gain_db": mean,
        "folds": folds,
        "cv_gain_db": cv,
        "in_sample_best": {"candidate": in_sample, "gain_db": mean[in_sample]},
        "shipped_gain_db": mean[shipped_name],
        "unanimous_pick": picks.pop() if len(picks := {f["pick"] for f in folds.values()}) == 1 else None,
        "wall_s": round(time.monotonic() - start, 1),
    }
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data["sampler_cross_validation"] = facts
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{'held out':10s} {'pick':30s} {'gain on other 3':>16s} {'held-out gain':>14s}")
    for clip, f in folds.items():
        print(f"{clip:10s} {f['pick']:30s} {f['selection_gain']:+16.3f} {f['held_out_gain']:+14.3f}")
    print(f"cross-validated gain {cv:+.3f} dB; in-sample best {in_sample} {mean[in_sample]:+.3f} dB; "
          f"shipped {shipped_name} {mean[shipped_name]:+.3f} dB  -> {args.out}")


if __name__ == "__main__":
    main()
