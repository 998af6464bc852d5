"""The project's benchmark harness over vsrq's portable core (:mod:`vsrq.benchmark`): rows stamped with the
git commit that produced them, and a file lock so that several benchmark processes can merge rows into one
results file at once. Research tooling: it lives here, not in the installed package (``fcntl`` is POSIX-only).
"""

from __future__ import annotations

import fcntl
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vsrq import benchmark


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
    """A benchmark of the project's sweeps: rows carry the git commit; writes merge under a file lock."""

    def stamp(self) -> str:
        return git_commit()

    @contextmanager
    def exclusive(self, results_dir: Path) -> Iterator[None]:
        with locked(results_dir / f".{self.name}.lock"):
            yield
