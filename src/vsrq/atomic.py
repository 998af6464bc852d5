"""All-or-nothing writes: the names of temporary files, and what a killed writer leaves behind.

Every output is written under ``.<name>.<pid>.<random>.partial`` beside its target and moved into place
when complete; a target that is replaced is first moved aside to ``.<name>.<pid>.<random>.old``. A run
killed at any point therefore leaves at the target either the complete previous output, the complete new
one, or nothing, plus at most these pid-named leftovers, which the next write to the same target removes
once their writer is no longer alive.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def partial_prefix(name: str) -> str:
    """The prefix of this process's temporary names for a target called ``name``."""
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(parent: Path, name: str) -> list[Path]:
    """Remove the temporary and moved-aside copies of ``parent / name`` whose writer is no longer alive."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\..+\.(partial|old)")
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
