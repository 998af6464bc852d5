"""Does a checkpoint lose along a clip's run, or in some frames of it? (issue 24; a diagnosis, not goal rows)

Per-frame Y-PSNR on one Vid4 clip (BI; foliage by default, 49 frames) for FP and kept checkpoints, scored three ways:
the whole clip, and each half alone (``--cut``, by default the middle), so that BasicVSR's recurrence starts afresh at
the cut. On the second half the forward pass then carries no state from the first, on the first half the backward
pass none from the second. A quantized model whose gap to FP on a half is much smaller alone than in the whole run
loses through what its recurrence carries over many steps (drift); the same gap either way means those frames'
content costs it. Rows: dataset ``vid4 <clip>``, ``vid4 <clip>[0:K]`` and ``vid4 <clip>[K:T]``, each clip entry
with ``psnr_y_frames``; the summary is printed and drawn (``bench/results/drift_<clip>.png``, the gap to FP per
frame).

    python bench/drift.py bench/cache/checkpoints/basicvsr-vimeo-bi-tarq-w4a4-f6ab11013408010f.vsrq
    python bench/drift.py --clip calendar --cut 20 A.vsrq B.vsrq
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, apply_threads, on_dataset  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq import checkpoint  # noqa: E402
from vsrq.benchmark import Row  # noqa: E402
from vsrq.data.datasets import PairedClip  # noqa: E402
from vsrq.errors import VsrqError  # noqa: E402

NAME = "drift"


def pieces(clip: PairedClip, cut: int) -> dict[str, PairedClip]:
    """The whole clip and its two halves, each a clip of its own (the recurrence restarts at the cut)."""
    t = len(clip.gt)
    whole = f"vid4 {clip.name}"
    return {whole: clip,
            f"{whole}[0:{cut}]": PairedClip(f"{clip.name}[0:{cut}]", clip.gt[:cut], clip.lr[:cut]),
            f"{whole}[{cut}:{t}]": PairedClip(f"{clip.name}[{cut}:{t}]", clip.gt[cut:], clip.lr[cut:])}


def frames_of(row: Row) -> list[float]:
    (entry,) = row.extra["clips"].values()
    return entry["psnr_y_frames"]


def gap(fp: Row, q: Row) -> np.ndarray:
    """Per-frame Y-PSNR of ``q`` minus FP's on the same piece (dB)."""
    return np.array(frames_of(q)) - np.array(frames_of(fp))


def gaps(fp: dict[str, Row], q: dict[str, Row], cut: int) -> dict[str, float]:
    """Mean gap to FP (dB) on each half, in the whole run and with the half run alone."""
    whole, first, second = (gap(fp[n], q[n]) for n in fp)
    return {"first half, whole run": float(whole[:cut].mean()), "first half, alone": float(first.mean()),
            "second half, whole run": float(whole[cut:].mean()), "second half, alone": float(second.mean())}


def labels(manifests: dict[Path, dict]) -> dict[Path, str]:
    """Each checkpoint named by what sets it apart from the others: the options and calibration windows that differ."""
    facts = {p: {**m["config"]["options"], "windows": f"{m['config']['calib']['clips']}x{m['config']['calib']['frames']}"}
             for p, m in manifests.items()}
    keys = sorted({k for f in facts.values() for k in f if len({str(g.get(k)) for g in facts.values()}) > 1})
    return {p: ", ".join(f"{k} {f.get(k)}" for k in keys) or p.stem for p, f in facts.items()}


def draw(fp: dict[str, Row], runs: dict[str, dict[str, Row]], cut: int, path: Path) -> None:
    """The gap to FP per frame of every checkpoint: the whole run solid, the halves alone dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fp)
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, q in runs.items():
        whole, first, second = (gap(fp[n], q[n]) for n in names)
        (line,) = ax.plot(range(len(whole)), whole, label=label)
        ax.plot(range(cut), first, "--", color=line.get_color())
        ax.plot(range(cut, cut + len(second)), second, "--", color=line.get_color())
    ax.axvline(cut - 0.5, color="grey", linewidth=0.5)
    ax.set_xlabel("frame")
    ax.set_ylabel("Y-PSNR minus FP (dB)")
    ax.set_title(f"{names[0]}: whole run (solid), each half alone (dashed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help=".vsrq files of one model (their .json beside them)")
    parser.add_argument("--clip", default="foliage", help="which Vid4 clip (default foliage)")
    parser.add_argument("--cut", type=int, default=0, help="the frame where the second half starts (default: middle)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    apply_threads(args)
    manifests = {}
    for path in args.checkpoints:  # every file checked before any scoring
        try:
            manifests[path] = checkpoint.read_manifest(path)
        except VsrqError as exc:
            raise SystemExit(str(exc)) from None
        except OSError as exc:
            raise SystemExit(f"{path}: {exc.strerror or exc}") from None
    models = {(m["model"]["name"], m["model"]["degradation"]) for m in manifests.values()}
    if len(models) != 1:
        raise SystemExit(f"the checkpoints are of more than one model: {sorted(models)}")
    ((model, degradation),) = models
    bench = Bench(NAME, model, "vid4", degradation, quick=False)  # its write keeps the other clips' and cuts' rows
    found = [c for c in bench.clips if c.name == args.clip]
    if not found:
        raise SystemExit(f"--clip: Vid4 has no clip {args.clip!r} ({', '.join(c.name for c in bench.clips)})")
    cut = args.cut or len(found[0].gt) // 2
    if not 2 <= cut <= len(found[0].gt) - 2:
        raise SystemExit(f"--cut must leave each half 2 frames or more, got {cut}")
    parts = pieces(found[0], cut)

    def score(model_: object, method: str, wbits: int, abits: int, scope: str | None, calib_s: float | None,
              notes: str, **extra: object) -> dict[str, Row]:
        out = {}
        for dataset, piece in parts.items():
            with on_dataset(bench, dataset, [piece], quick=False):
                out[dataset] = bench.row(model_, method, wbits, abits, scope, calib_s, notes, per_frame=True, **extra)
        return out

    fp = score(bench.loaded.model, "fp", 32, 32, None, None, "")
    runs, names = {}, labels(manifests)
    for path, manifest in manifests.items():
        facts = path.with_suffix(".json")
        known = json.loads(facts.read_text()) if facts.is_file() else {}
        config = manifest["config"]
        notes = f"checkpoint {path.name}, calibrated at {known.get('commit', 'unknown commit')}"
        runs[names[path]] = q = score(checkpoint.load(path), manifest["method"], config["wbits"], config["abits"],
                                    config["scope"], known.get("calib_s"), notes, options=config["options"],
                                    calib=config["calib"])
        summary = gaps(fp, q, cut)
        for row in q.values():
            row.extra["gap_to_fp"] = {k: round(v, 3) for k, v in summary.items()}
        print(f"{path.name}: " + ", ".join(f"{k} {v:+.2f}" for k, v in summary.items()) + " dB", flush=True)
        bench.write(RESULTS)
    draw(fp, runs, cut, RESULTS / f"{NAME}_{args.clip}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
