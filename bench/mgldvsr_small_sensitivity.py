"""Why ``mgldvsr-small`` cannot serve as the diffusion quantization benchmark: its denoiser's output error at W8A8.

Denoiser inputs are captured from the float sampler on 4 default calibration windows (5 frames, 32 px LR
crops; 2 of 2 sampler steps: 8 items); each row quantizes with MinMax (per-tensor static activations) and
reports, per captured call of 2 items, the relative L2 distance of the quantized denoiser output from the
float one. Rows: every quantizable layer at W8A8, at W8 with float activations, the same with the decoder's
skip concatenations split (``--split-concat``), and the one layer that carries the error alone.

    python bench/mgldvsr_small_sensitivity.py     # writes bench/results/mgldvsr_small_sensitivity.{json,md}
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from harness import git_commit  # noqa: E402

import vsrq  # noqa: E402
from vsrq.benchmark import today, write_results  # noqa: E402
from vsrq.config import CalibConfig, LayerRule, QuantConfig  # noqa: E402
from vsrq.data.clips import load_calibration  # noqa: E402
from vsrq.models.catalog import load_model  # noqa: E402
from vsrq.models.mgldvsr.capture import capture_denoiser_inputs  # noqa: E402

NAME = "mgldvsr_small_sensitivity"
SKIP_CONV = "denoiser.model.diffusion_model.output_blocks.5.0.skip_connection"
ROWS = (  # (label, config keyword arguments)
    ("every layer W8A8", {}),
    ("every layer W8, activations float", {"rules": (LayerRule("*", abits=32),)}),
    ("every layer W8A8, skip concatenations split", {"split_concat": True}),
    ("only the last decoder block's skip conv W8A8", {"include": (SKIP_CONV,)}),
)


def table(rows: list[dict], name: str) -> str:
    lines = [f"# {name}", "", f"mgldvsr-small, MinMax, relative L2 error of the denoiser output per captured call; "
             f"commit {rows[0]['commit']}, {rows[0]['date']}.", "",
             "| quantized | errors per call | max |", "| --- | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['label']} | {', '.join(f'{e:.3f}' for e in r['errors'])} | {max(r['errors']):.3f} |")
    return "\n".join(lines)


def main() -> int:
    torch.set_num_threads(2)
    loaded = load_model("mgldvsr-small")
    calib = load_calibration(CalibConfig(clips=4, frames=5, crop=32), 0)
    captured = capture_denoiser_inputs(loaded.model, calib, show_progress=False)
    host = loaded.host
    calls = list(host.calls(captured, 2))
    with torch.no_grad():
        references = [host.forward(loaded.model, *c.args) for c in calls]
    rows, commit = [], git_commit()
    for label, kwargs in ROWS:
        qm = vsrq.quantize(loaded.model, QuantConfig(method="minmax", wbits=8, abits=8, **kwargs), captured,
                           log=lambda s: None, show_progress=False)
        with torch.no_grad():
            errors = [float((qm(*c.args) - ref).norm() / ref.norm()) for c, ref in zip(calls, references)]
        rows.append({"model": "mgldvsr-small", "method": "minmax", "wbits": 8, "abits": 8, "label": label,
                     "errors": [round(e, 4) for e in errors], "calibration_sha256": captured.sha256[:16],
                     "commit": commit, "date": today()})
        print(f"{label}: {', '.join(f'{e:.3f}' for e in errors)}", flush=True)
    write_results(rows, NAME, RESULTS, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
