"""Integer codes packed at their real bit-width.

Codes are written as an LSB-first bit stream: two 4-bit codes per byte, four 6-bit codes per three
bytes, one 8-bit code per byte. Signed (symmetric) codes are offset by 2^(b-1) first so every
code is an unsigned b-bit number.
"""

from __future__ import annotations

import numpy as np
import torch

from vsrq.errors import VsrqError


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers < 2^bits -> uint8 bit stream of ceil(n * bits / 8) bytes."""
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise VsrqError(f"codes out of range for {bits}-bit packing: [{flat.min()}, {flat.max()}]")
    bit_matrix = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` unsigned codes (int64)."""
    stream = np.unpackbits(np.asarray(data, dtype=np.uint8), bitorder="little")[: count * bits]
    if stream.size != count * bits:
        raise VsrqError(f"packed data holds {stream.size // bits} codes, expected {count}")
    return (stream.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


def pack_codes(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Signed or unsigned integer codes -> packed uint8 tensor."""
    arr = codes.detach().cpu().numpy().astype(np.int64)
    if symmetric:
        arr = arr + (1 << (bits - 1))
    return torch.from_numpy(pack_bits(arr, bits))


def unpack_codes(packed: torch.Tensor, bits: int, symmetric: bool, shape: tuple[int, ...]) -> torch.Tensor:
    """Packed uint8 tensor -> integer codes (int16) of ``shape``."""
    count = int(np.prod(shape)) if shape else 1
    arr = unpack_bits(packed.numpy(), bits, count)
    if symmetric:
        arr = arr - (1 << (bits - 1))
    return torch.from_numpy(arr.astype(np.int16)).reshape(shape)


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8
