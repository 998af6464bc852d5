"""Where TARQ's calibration memory goes: its rounding stage under each heap setting (issue 24, <= 4 GB).

TARQ W4A4 FQ on the official BasicVSR (Vimeo BIx4), the quality benchmarks' calibration windows, with
the fine-tuning stages skipped and one rounding epoch (12 steps): the stage whose resident size climbs
to 3.5-4.3 GB while its live tensors stay under 2 GB. Each setting runs in its own process (an
allocator is chosen at start-up) and reports the process's peak resident size (VmHWM) and the time of
the calibration alone:

- ``default``: glibc malloc as it comes (its mmap threshold grows up to 32 MB as big blocks are freed), the
  calibration's own heap trimming switched off;
- ``bound_heap``: a fixed 1 MB mmap threshold (what ``vsrq quantize --low-memory`` switches on);
- ``mmap-2mb`` / ``mmap-4mb``: the same switch at 2 and 4 MB;
- ``arena-1``: one malloc arena (``MALLOC_ARENA_MAX=1``);
- ``thp``: PyTorch's 2 MB-aligned transparent-huge-page allocations (``THP_MEM_ALLOC_ENABLE=1``);
- ``jemalloc``: jemalloc preloaded, where the system has it (``libjemalloc.so.2``);
- ``trim-0.1`` / ``trim-0.5``: glibc as it comes, with a thread returning free heap pages every 0.1 / 0.5 s
  (``vsrq.memory.trimming_heap``; 0.5 s is what every calibration now runs with). The other settings run
  with that trimming off.

    python bench/heap_probe.py                       # every setting, one process each (~3-7 min each on 2 cores)
    python bench/heap_probe.py --only default jemalloc
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_CALIB, RESULTS  # noqa: E402

NAME = "heap_probe"
STEPS_NOTE = "fine-tuning skipped, 1 rounding epoch (12 steps)"
JEMALLOC = "libjemalloc.so.2"
# setting -> (environment added, mmap threshold in MB set from inside the process, trim interval in s)
SETTINGS: dict[str, tuple[dict[str, str], int | None, float | None]] = {
    "default": ({}, None, None),
    "bound_heap": ({}, 1, None),
    "mmap-2mb": ({}, 2, None),
    "mmap-4mb": ({}, 4, None),
    "arena-1": ({"MALLOC_ARENA_MAX": "1"}, None, None),
    "thp": ({"THP_MEM_ALLOC_ENABLE": "1"}, None, None),
    "jemalloc": ({"LD_PRELOAD": JEMALLOC}, None, None),
    "trim-0.1": ({}, None, 0.1),
    "trim-0.5": ({}, None, 0.5),
}


def jemalloc_present() -> bool:
    return ctypes.util.find_library("jemalloc") is not None or any(
        Path(d, JEMALLOC).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"))


def worker(setting: str) -> None:
    """Run the probe in this process under ``setting`` and print its peak RSS and calibration time as JSON."""
    from vsrq import memory
    from vsrq.config import QuantConfig
    from vsrq.data.clips import load_calibration
    from vsrq.methods import pipeline
    from vsrq.models.catalog import load_model

    _, threshold_mb, trim_s = SETTINGS[setting]
    if threshold_mb is not None and not memory.set_mmap_threshold(threshold_mb << 20):
        raise SystemExit("this C library has no glibc mmap threshold")
    loaded = load_model("basicvsr-vimeo-bi")
    calib = load_calibration(BENCH_CALIB, 0)
    config = QuantConfig(method="tarq", wbits=4, abits=4, calib=BENCH_CALIB,
                         options={"fab_budget": 4.0, "finetune": False, "round_epochs": 1})
    # calibration trims every 0.5 s by default: the probe puts the setting's own trimming (or none) in its place
    pipeline.trimming_heap = (lambda: memory.trimming_heap(trim_s)) if trim_s is not None else contextlib.nullcontext
    start = time.perf_counter()
    pipeline.quantize_model(loaded, config, calib, log=lambda s: None, show_progress=False)
    print(json.dumps({"peak_rss_mb": round(memory.peak_rss_mb() or 0), "calib_s": round(time.perf_counter() - start, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=tuple(SETTINGS), default=tuple(SETTINGS))
    parser.add_argument("--worker", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return 0
    from harness import git_commit

    from vsrq.benchmark import today

    path = RESULTS / f"{NAME}.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["setting"] not in args.only]
    commit, date = git_commit(), today()
    for setting in args.only:
        env = SETTINGS[setting][0]
        if setting == "jemalloc" and not jemalloc_present():
            print(f"{setting}: skipped, {JEMALLOC} is not installed (Debian: apt install libjemalloc2)", flush=True)
            continue
        command = [sys.executable, __file__, "--worker", setting]
        out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{setting} failed:\n{out.stderr[-2000:]}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"setting": setting, **measured, "model": "basicvsr-vimeo-bi", "method": "tarq", "wbits": 4,
                     "abits": 4, "scope": "fq", "notes": STEPS_NOTE, "commit": commit, "date": date})
        print(f"{setting}: peak {measured['peak_rss_mb']} MB, {measured['calib_s']:.0f} s", flush=True)
        write(path, rows)
    return 0


def write(path: Path, rows: list[dict]) -> None:
    order = list(SETTINGS)
    rows = sorted(rows, key=lambda r: order.index(r["setting"]))
    path.write_text(json.dumps(rows, indent=1) + "\n")
    base = next((r for r in rows if r["setting"] == "default"), None)
    lines = [f"# {NAME}", "", f"TARQ W4A4 calibration of BasicVSR, {STEPS_NOTE}, one process per heap setting; "
             "time and peak RSS relative to the default allocator's row.", "",
             "| setting | peak RSS (MB) | calibration (s) | x default's time | run |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        ratio = f"{r['calib_s'] / base['calib_s']:.2f}" if base else "-"
        lines.append(f"| {r['setting']} | {r['peak_rss_mb']} | {r['calib_s']:.0f} | {ratio} | {r['date']} {r['commit']} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
