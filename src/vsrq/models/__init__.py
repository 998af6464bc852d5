"""Architectures and the weights resolver; no quantization here."""
