"""Progress bars for long work (calibration, upscaling, evaluation), on stderr."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal and ``VSRQ_PROGRESS`` is unset."""
    show = enabled and (sys.stderr.isatty() or os.environ.get("VSRQ_PROGRESS") == "1")
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, file=sys.stderr, dynamic_ncols=True, leave=False)
