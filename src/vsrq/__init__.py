"""vsrq: low-bit post-training quantization for video super-resolution.

The jobs (``quantize``, ``load``, ``save``, ``upscale``, ``upscale_batch``, ``evaluate``, ``export``,
``degrade_path``) and the config objects are attributes of this package, resolved on first use: ``import
vsrq.checkpoint`` to run a checkpoint never loads the calibration code.
"""

from __future__ import annotations

import importlib
from typing import Any

from vsrq.errors import VsrqError
from vsrq.version import __version__

_LAZY = {
    **{name: "vsrq.api" for name in ("degrade_path", "evaluate", "export", "load", "quantize", "save", "upscale")},
    "upscale_batch": "vsrq.batch",
    **{name: "vsrq.config" for name in ("CalibConfig", "LayerRule", "QuantConfig", "QuantizerSpec")},
}

__all__ = ["VsrqError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vsrq' has no attribute {name!r}")
