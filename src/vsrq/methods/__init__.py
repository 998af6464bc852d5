"""Quantization recipes over the primitives, joined by a registry (:func:`get_method`)."""

from vsrq.methods import qbasicvsr, quantvsr, static  # noqa: F401  (importing registers the recipes)
from vsrq.methods.base import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
