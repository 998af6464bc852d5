"""Score kept checkpoints again, on Vid4's quick or full frames, without calibrating: the command behind
figures that compare one calibration on two frame sets, or two calibrations of one setting.

Every quality benchmark keeps its checkpoints under bench/cache/checkpoints (a ``.vsrq`` and a ``.json`` with
its calibration time and commit). Each checkpoint given here gets a row in ``bench/results/rescore.json`` whose
notes name the file and the commit that calibrated it; the model and degradation come from its manifest.

    python bench/rescore.py bench/cache/checkpoints/basicvsr-vimeo-bi-quantvsr-w6a6-c0b602c4c751b28a.vsrq
    python bench/rescore.py --full bench/cache/checkpoints/*-tarq-*.vsrq
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from harness import Bench  # noqa: E402

from vsrq import checkpoint  # noqa: E402
from vsrq.benchmark import Row  # noqa: E402
from vsrq.errors import VsrqError  # noqa: E402


def rescore(bench: Bench, path: Path) -> Row:
    """``bench``'s row of the checkpoint at ``path`` on its clips, with the calibration time and commit of the
    ``.json`` kept beside it (if any)."""
    manifest = checkpoint.read_manifest(path)
    facts_path = path.with_suffix(".json")
    facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    config = manifest["config"]
    notes = f"checkpoint {path.name}, calibrated at {facts.get('commit', 'unknown commit')}"
    return bench.row(checkpoint.load(path), manifest["method"], config["wbits"], config["abits"], config["scope"],
                     facts.get("calib_s"), notes, options=config["options"], created=manifest["created"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help=".vsrq files (their .json beside them, if kept)")
    parser.add_argument("--full", action="store_true", help="every frame of every clip (default: first 10 of each)")
    args = parser.parse_args()
    manifests = {}
    for path in args.checkpoints:  # every file checked before any scoring
        if path.suffix != ".vsrq" or not path.is_file():
            raise SystemExit(f"{path}: not a .vsrq checkpoint file")
        try:
            manifests[path] = checkpoint.read_manifest(path)
        except VsrqError as exc:
            raise SystemExit(str(exc)) from None
    for path, manifest in manifests.items():
        model = manifest["model"]
        bench = Bench("rescore", model["name"], "vid4", model["degradation"], not args.full)
        bench.resume(RESULTS)
        row = rescore(bench, path)
        bench.write(RESULTS)
        print(f"{path.name}: {row.psnr_y:.3f} dB / {row.ssim_y:.4f} on {bench.frames} frames", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
