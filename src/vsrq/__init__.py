"""vsrq: low-bit post-training quantization for video super-resolution."""

from vsrq.api import degrade_path, evaluate, export, load, quantize, save, upscale
from vsrq.config import CalibConfig, LayerRule, QuantConfig, QuantizerSpec
from vsrq.errors import VsrqError

__version__ = "0.1.0"
__all__ = [
    "CalibConfig",
    "LayerRule",
    "QuantConfig",
    "QuantizerSpec",
    "VsrqError",
    "__version__",
    "degrade_path",
    "evaluate",
    "export",
    "load",
    "quantize",
    "save",
    "upscale",
]
