"""All-or-nothing writes: the names of temporary files, and what a killed writer leaves behind.

Every output is written under ``.<name>.<pid>.<random>.partial`` beside its target and moved into place
when complete; a target that is replaced is first moved aside to ``.<name>.<pid>.<random>.old``. A run
killed at any point therefore leaves at the target either the complete previous output, the complete new
one, or nothing, plus at most these pid-named leftovers, which the next write to the same target removes
once their writer is no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vsrq.errors import VsrqError

_TEMP = re.compile(r"\.(.+)\.(\d+)\.[^.]+\.(partial|old)")  # mkstemp/mkdtemp names hold no dots


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


def cache_dir() -> Path:
    """``$VSRQ_CACHE``, else ``~/.cache/vsrq``: where work that later runs reuse is kept (captures, exported
    graphs, compiled kernels), each kind in its own subfolder keyed by content."""
    return Path(os.environ.get("VSRQ_CACHE") or Path.home() / ".cache" / "vsrq")


def make_parent(target: Path) -> Path:
    """Create the folder ``target`` goes in; one clear error where a file stands in its way."""
    parent = target.parent if str(target.parent) else Path(".")
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise VsrqError(f"cannot write {target}: {folder} is a file, not a folder")
            break
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def clean_leftovers(parent: Path, name: str) -> list[Path]:
    """Remove the temporary and moved-aside copies of ``parent / name`` whose writer is no longer alive."""
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        match = _TEMP.fullmatch(path.name)
        if match and match.group(1) == name and int(match.group(2)) != os.getpid() and not _alive(int(match.group(2))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def file_sha256(path: Path, digest: "hashlib._Hash | None" = None) -> str:
    """SHA-256 of a file's bytes, read in blocks (``digest``: one to continue)."""
    h = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def naming(target: Path) -> Iterator[None]:
    """Give an operating-system error raised while writing ``target`` the target's name where the library
    that failed did not say which file (onnx, PIL and PyAV write from native code)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


@contextlib.contextmanager
def staged_files(primary: Path, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside ``primary`` for a file that readers open first and the companions it names
    (an ONNX forward graph and its backward graph); what the block writes there is moved beside ``primary``.

    ``primary`` leaves first and arrives last, so a kill at any point leaves no ``primary`` (nothing) or
    a ``primary`` whose companions came with it, never one beside another run's companions. ``replace``
    False is for caches keyed by content, where any complete copy will do: an existing ``primary`` is kept
    and never removed, so a process reading it while another finishes the same export always finds it.
    """
    primary = Path(primary)
    make_parent(primary)
    clean_leftovers(primary.parent, primary.name)
    stage = Path(tempfile.mkdtemp(prefix=partial_prefix(primary.name), suffix=".partial", dir=primary.parent))
    try:
        with naming(primary):
            yield stage
        if not (stage / primary.name).is_file():
            raise FileNotFoundError(errno.ENOENT, "nothing was written", str(primary))
        if not replace and primary.is_file():
            return
        primary.unlink(missing_ok=True)
        for f in sorted(stage.iterdir()):
            if f.name != primary.name:
                os.replace(f, primary.parent / f.name)
        os.replace(stage / primary.name, primary)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error, naming the output being written rather than its temporary
    name; a full disk says that nothing was left behind (every writer here removes its temporary files)."""
    where = exc.filename
    if where is not None:
        path = Path(os.fsdecode(where))
        for part in (path, *path.parents):
            match = _TEMP.fullmatch(part.name)
            if match:
                where = part.parent / match.group(1)
                break
    text = exc.strerror or str(exc)
    line = f"writing {where}: {text}" if where is not None else text
    if exc.errno in _FULL:
        line += "; nothing was written: free some space (or choose another folder) and rerun"
    return line
