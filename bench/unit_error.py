"""Where block reconstruction's local gain goes (issue 24): the network output's error, and each
reconstruction unit's local error, on the calibration windows its recording passes saw, on the other
calibration windows, and on Vid4 (held out), for cached checkpoints of the official BasicVSR (Vimeo BIx4).

Output error: ``sum |Q(x) - F(x)|^2 / sum |F(x)|^2`` of the quantized and float networks on the same clips.
Local error: the same ratio for a unit fed the quantized network's own input, against the float unit on that
input. A method whose targets are the float network's outputs on quantized inputs (BRECQ's default) departs
from the float unit on purpose, to absorb the error upstream, so its local error may rise while the output's
falls: the output error is the measure of success, the local one shows how far the units moved. Checkpoints
come from the other benchmarks' cache (``bench/cache/checkpoints``; make them with e.g. ``python
bench/reconstruct_vid4.py --only brecq-w4a4``); the first one named is the reference the others are compared
with, unit by unit.

    python bench/unit_error.py START.vsrq OTHER.vsrq [...]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS  # noqa: E402
from harness import git_commit  # noqa: E402

from vsrq import checkpoint  # noqa: E402
from vsrq.benchmark import QUICK_FRAMES, Row, mean_scores, score_dataset, today, write_results  # noqa: E402
from vsrq.data.clips import load_calibration  # noqa: E402
from vsrq.data.datasets import load_paired  # noqa: E402
from vsrq.methods.reconstruct import recording_windows  # noqa: E402
from vsrq.models.catalog import load_model  # noqa: E402

NAME = "unit_error"
MODEL = "basicvsr-vimeo-bi"


def unit_errors(qm: torch.nn.Module, fp: torch.nn.Module, units: list[str], clips: list[torch.Tensor]
                ) -> tuple[dict[str, float], float]:
    """Per unit: relative output error on the quantized network's own inputs; and the network output's."""
    fp_units, q_units = dict(fp.named_modules()), dict(qm.base.named_modules())
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def hook_for(unit: str):
        def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            ref = fp_units[unit](*args)
            sums[unit][0] += float((out - ref).pow(2).sum())
            sums[unit][1] += float(ref.pow(2).sum())
        return hook

    hooks = [q_units[u].register_forward_hook(hook_for(u)) for u in units]
    out_err = [0.0, 0.0]
    try:
        with torch.no_grad():
            for clip in clips:
                q, f = qm(clip[None]), fp(clip[None])
                out_err[0] += float((q - f).pow(2).sum())
                out_err[1] += float(f.pow(2).sum())
    finally:
        for h in hooks:
            h.remove()
    return {u: s[0] / s[1] for u, s in sums.items()}, out_err[0] / out_err[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="the reference first")
    args = parser.parse_args()
    fp = load_model(MODEL).model.eval()
    calib = load_calibration(BENCH_CALIB, seed=0)
    loaded = []
    for path in args.checkpoints:
        qm = checkpoint.load(path).eval()
        recon = qm.manifest.get("notes", {}).get("reconstruction", {})
        windows = recon.get("windows", 0)
        loaded.append((path, qm, windows))
    # the windows the reconstruction's recording passes ran (the same rule as vsrq's), else all as "seen"
    windows = next((w for _, _, w in loaded if w), 0)
    seen_idx = recording_windows(len(calib), windows) or list(range(len(calib)))
    vid4 = load_paired("vid4", "bi", QUICK_FRAMES)
    sets = {"seen": [calib.clips[i] for i in seen_idx],
            "unseen": [c for i, c in enumerate(calib.clips) if i not in seen_idx],
            "vid4": [torch.from_numpy(c.lr).float().div(255).permute(0, 3, 1, 2).contiguous() for c in vid4]}
    units = list(loaded[0][1].host.blocks(loaded[0][1].base))
    table: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for path, qm, _ in loaded:
        per_set, outputs = {}, {}
        for name, clips in sets.items():
            if clips:
                per_set[name], outputs[name] = unit_errors(qm, fp, units, clips)
        table[path.name] = per_set
        mean = {name: sum(e.values()) / len(e) for name, e in per_set.items()}
        ref = table[args.checkpoints[0].name]
        worse = {name: sum(per_set[name][u] > ref[name][u] for u in units) for name in per_set}
        print(f"{path.name}: mean unit error " + ", ".join(f"{k} {v:.5f}" for k, v in mean.items())
              + "; output error " + ", ".join(f"{k} {v:.5f}" for k, v in outputs.items())
              + "; units worse than the reference " + ", ".join(f"{k} {v}/{len(units)}" for k, v in worse.items()),
              flush=True)
        m = qm.manifest
        scores, fabs = score_dataset(qm, vid4, show_progress=False)
        psnr, ssim = mean_scores(scores)
        print(f"  Vid4 BI quick: {psnr:.3f} dB / {ssim:.4f}", flush=True)
        rows.append(Row(MODEL, m["method"], m["config"]["wbits"], m["config"]["abits"], m["config"].get("scope"),
                        "vid4", "bi", "quick", round(psnr, 4), round(ssim, 5), round(sum(fabs) / len(fabs), 3),
                        round(path.stat().st_size / 1e6, 3), None,
                        f"per-unit error vs {args.checkpoints[0].name}; windows seen by the recording passes: "
                        f"{seen_idx}", git_commit(), today(),
                        {"checkpoint": path.name, "unit_error_mean": {k: round(v, 6) for k, v in mean.items()},
                         "output_error": {k: round(v, 6) for k, v in outputs.items()},
                         "units_worse_than_reference": worse,
                         "unit_error": {name: {u: round(v, 6) for u, v in e.items()} for name, e in per_set.items()}}))
    write_results([r.to_dict() for r in rows], NAME, RESULTS, table=markdown)
    return 0


def markdown(rows: list[dict], title: str) -> str:
    sets = list(rows[0]["unit_error_mean"])
    lines = [f"# {title}", "", "Relative error of the network output, and local error of each residual block on the "
             "quantized network's own inputs against the float block (mean over blocks); "
             f"reference: {rows[0]['checkpoint']}. Commit {rows[0]['commit']}, {rows[0]['date']}.", "",
             "| checkpoint | Y-PSNR | " + " | ".join(f"unit error, {s}" for s in sets) + " | "
             + " | ".join(f"output error, {s}" for s in sets) + " | units worse, vid4 |",
             "| --- |" + " ---: |" * (2 * len(sets) + 2)]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['psnr_y']:.3f} | "
                     + " | ".join(f"{r['unit_error_mean'][s]:.5f}" for s in sets) + " | "
                     + " | ".join(f"{r['output_error'][s]:.5f}" for s in sets)
                     + f" | {r['units_worse_than_reference'].get('vid4', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
