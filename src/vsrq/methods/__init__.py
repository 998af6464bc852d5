"""Quantization recipes over the primitives, joined by a registry."""
