"""Quantization recipes over the primitives, joined by a registry (:func:`get_method`)."""

from vsrq.errors import VsrqError
from vsrq.methods import brecq, qbasicvsr, qdiffusion, quantvsr, static, tarq  # noqa: F401  (importing registers the recipes)
from vsrq.methods.base import METHODS, Method, register_method


def get_method(name: str) -> type[Method]:
    """The recipe registered as ``name``."""
    if name not in METHODS:
        raise VsrqError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "register_method"]
