"""The one exception type users see.

Every failure caused by input (a missing file, a wrong checkpoint, an unsupported layer) is raised
as :class:`VsrqError` with a message that fits on one line; the CLI prints it without a traceback.
"""

from __future__ import annotations


class VsrqError(Exception):
    """A user-facing error: the message says what is wrong and, where possible, what to do."""
