"""Randomized Hadamard rotations applied with a fast Walsh-Hadamard transform.

A rotation ``Q = B diag(s)`` mixes the input channels of a layer so that outliers spread over all
channels before quantization (QuaRot, QuantVSR): activations become ``Q x`` and weights ``W Q^T``,
leaving the float product unchanged. ``s`` is a random sign vector; ``B`` is block-diagonal with
normalized Hadamard blocks. A block of size ``2^k`` is applied by the FWHT; a block of size
``m * 2^k`` with ``m`` in {12, 20, 44, 60} is the Kronecker product of a Paley Hadamard matrix of
order ``m`` (regenerated from ``m``, never stored) and the FWHT. Any other size is split into the
largest such block plus a remainder, recursively (67 = 64 + 2 + 1): still orthogonal, but mixing
only within blocks. A checkpoint stores the sign vector and the size; never a dense matrix.

On a CPU the FWHT's log2(n) passes over the tensor can cost more than the conv they feed at the
channel counts of VSR models (``bench/rotation.py`` times both), so rotations of up to
``DENSE_MAX`` channels run as one product with the matrix the FWHT builds from the identity,
cached in memory and rebuilt when the signs change.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

DENSE_MAX = 256  # rotations up to this size run as a dense product (see the module docstring)
PALEY_ORDERS = (12, 20, 44, 60)  # q + 1 for primes q = 3 (mod 4): 11, 19, 43, 59


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@lru_cache(maxsize=None)
def paley_hadamard(order: int) -> torch.Tensor:
    """Hadamard matrix of ``order`` = q + 1 (q prime, q = 3 mod 4) by Paley's first construction."""
    q = order - 1
    if q < 3 or q % 4 != 3 or any(q % d == 0 for d in range(2, int(math.isqrt(q)) + 1)):
        raise ValueError(f"no Paley construction for order {order}")
    residues = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, q)]
    jac = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    s = torch.zeros(order, order, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jac
    return s + torch.eye(order, dtype=torch.float64)


def hadamard_block(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m * 2^k and a Hadamard matrix of order m available (m = 1 for powers of two)."""
    for m in (1,) + PALEY_ORDERS:
        if n % m == 0 and _is_pow2(n // m):
            return m, n // m
    return None


def block_plan(n: int) -> list[int]:
    """Sizes of the Hadamard blocks covering ``n`` channels, largest first."""
    blocks = []
    while n > 0:
        if hadamard_block(n) is not None:
            blocks.append(n)
            break
        best = max(s for s in range(1, n + 1) if hadamard_block(s) is not None)
        blocks.append(best)
        n -= best
    return blocks


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Normalized Walsh-Hadamard transform along the last dimension (a power of two)."""
    n = x.shape[-1]
    if not _is_pow2(n):
        raise ValueError(f"FWHT needs a power-of-two size, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x / math.sqrt(n)


def _hadamard_last(x: torch.Tensor, n: int) -> torch.Tensor:
    m, p = hadamard_block(n)  # type: ignore[misc]
    if m == 1:
        return fwht(x)
    hm = (paley_hadamard(m) / math.sqrt(m)).to(x.dtype)
    y = fwht(x.reshape(*x.shape[:-1], m, p))  # H_p on the fast axis
    y = torch.matmul(hm, y)  # H_m on the slow axis: (H_m kron H_p) x
    return y.reshape(x.shape)


class HadamardRotation(nn.Module):
    """``Q = B diag(signs)`` over ``size`` channels; ``apply(x, dim)`` computes ``Q x`` along ``dim``."""

    def __init__(self, size: int, seed: int = 0, signs: torch.Tensor | None = None) -> None:
        super().__init__()
        self.size = size
        if signs is None:
            gen = torch.Generator().manual_seed(seed)
            signs = torch.randint(0, 2, (size,), generator=gen).float() * 2 - 1
        self.register_buffer("signs", signs.float().reshape(size))
        self.blocks = block_plan(size)
        self._dense: tuple[tuple, torch.Tensor] | None = None  # (signs version, dtype, device) -> Q

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "HadamardRotation":
        self._dense = None  # rebuilt on first use where the signs now live
        return super()._apply(fn, recurse)

    def apply(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.size > DENSE_MAX:
            return self.fast_apply(x, dim)
        q = self._dense_matrix(x.dtype, x.device)
        if dim % x.dim() == 1 and x.dim() in (4, 5):  # channels of a conv input: a 1x1 convolution
            conv = F.conv2d if x.dim() == 4 else F.conv3d
            return conv(x, q.view(*q.shape, *([1] * (x.dim() - 2))))
        return torch.matmul(x.movedim(dim, -1), q.T).movedim(-1, dim)

    def fast_apply(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``Q x`` along ``dim`` by the FWHT, without forming Q."""
        x = x.movedim(dim, -1) * self.signs.to(x.dtype)
        parts, start = [], 0
        for n in self.blocks:
            parts.append(_hadamard_last(x[..., start : start + n], n) if n > 1 else x[..., start : start + n])
            start += n
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out.movedim(-1, dim)

    def _dense_matrix(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (self.signs._version, self.signs.data_ptr(), dtype, device)
        if self._dense is None or self._dense[0] != key:
            eye = torch.eye(self.size, dtype=torch.float64, device=self.signs.device)
            self._dense = (key, self.fast_apply(eye, dim=0).to(device=device, dtype=dtype))
        return self._dense[1]

    def matrix(self) -> torch.Tensor:
        """The dense Q, built by the FWHT."""
        return self.fast_apply(torch.eye(self.size), dim=0)

    def extra_repr(self) -> str:
        return f"size={self.size}, blocks={self.blocks}"
