"""The one exception type users see.

Every failure caused by input (a missing file, a wrong checkpoint, an unsupported layer) is raised
as :class:`VsrqError` with a message that fits on one line; the CLI prints it without a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class VsrqError(Exception):
    """A user-facing error: the message says what is wrong and, where possible, what to do."""


def _first_line(exc: BaseException) -> str:
    return next((part.strip() for part in str(exc).splitlines() if part.strip()), "")


def cause(exc: BaseException) -> str:
    """A library's exception as one line for a :class:`VsrqError`: its type and the first line of its message
    (compilers and native libraries raise pages)."""
    line = _first_line(exc)
    return f"{type(exc).__name__}: {line[:160]}" if line else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """What a user reads for a failed item of a batch: a :class:`VsrqError`'s or OSError's own first line (written
    for users already), any other exception with its type (:func:`cause`)."""
    if isinstance(exc, (VsrqError, OSError)):
        return _first_line(exc) or type(exc).__name__
    return cause(exc)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail in one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VsrqError(f"{purpose} needs the {module.split('.')[0]} package: pip install 'vsrq[{extra}]'") from None
