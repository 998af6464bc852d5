"""Fidelity metrics and the reports built from them."""
