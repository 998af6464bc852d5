"""Model-agnostic quantization primitives: quantizers, observers, layers, swapping, packing, accounting."""
