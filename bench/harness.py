"""The project's benchmark harness over vsrq's portable core (:mod:`vsrq.benchmark`): rows stamped with the
git commit that produced them, and a file lock so that several benchmark processes can merge rows into one
results file at once. Research tooling: it lives here, not in the installed package (``fcntl`` is POSIX-only).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torch import nn

from vsrq import benchmark, checkpoint
from vsrq.config import QuantConfig
from vsrq.devices import cpu_flags

CHECKPOINTS = Path(__file__).resolve().parent / "cache" / "checkpoints"


def git_commit() -> str:
    """HEAD's short hash, "+dirty" when tracked files other than results and Markdown differ from it
    (a benchmark that runs while others write their results still ran committed code)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results", ":(exclude)*.md"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_isa() -> str:
    """The x86 features that decide int8 and bf16 speed (VNNI, AVX512-BF16, AMX), for speed rows: ratios move with
    them, so runs on different machines must say which they ran on."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
                    if f in flags) or "none of avx2, avx512, vnni, amx"


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` among processes (POSIX ``flock``)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Bench(benchmark.Bench):
    """A benchmark of the project's sweeps: rows carry the git commit; writes merge under a file lock; every
    quantized setting is kept as a checkpoint under ``bench/cache/checkpoints`` (not committed), so scoring it
    again (every frame, another dataset) never calibrates again."""

    def stamp(self) -> str:
        return git_commit()

    def checkpoint_path(self, config: QuantConfig) -> Path:
        """Where ``config``'s checkpoint of this benchmark's model and calibration sample is kept."""
        # no device in the key: a checkpoint calibrated on a GPU is scored anywhere, its manifest says where it was made
        key = json.dumps({"model": self.model_name, "config": config.to_dict(), "calib_seed": self.seed,
                          "calib": self.calib.sha256}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return CHECKPOINTS / f"{self.model_name}-{config.method}-w{config.wbits}a{config.abits}-{digest}.vsrq"

    def quantize(self, config: QuantConfig) -> tuple[nn.Module, float]:
        """The cached checkpoint with its calibration time and peak RSS as measured, else a new calibration
        (kept). A cached model is the saved, frozen one: outputs equal the calibrated model's (tested)."""
        path = self.checkpoint_path(config)
        facts = path.with_suffix(".json")
        if path.exists() and facts.exists():
            known = json.loads(facts.read_text())
            self.last_peak_rss_mb = known["peak_rss_mb"]
            # the key holds the settings, not the code: after a change to a method, delete its file to recalibrate
            print(f"{self.name}: reusing {path.name}, calibrated at {known['commit']}", flush=True)
            return checkpoint.load(path), known["calib_s"]
        qm, seconds = super().quantize(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(qm, path, overwrite=True)
        tmp = facts.with_name(f".{facts.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"calib_s": seconds, "peak_rss_mb": self.last_peak_rss_mb, "commit": self.commit,
                                   "config": config.to_dict()}, indent=1))
        os.replace(tmp, facts)  # the facts arrive after the checkpoint: a kill leaves either both or a rerun
        return qm, seconds

    @contextmanager
    def exclusive(self, results_dir: Path) -> Iterator[None]:
        with locked(results_dir / f".{self.name}.lock"):
            yield
