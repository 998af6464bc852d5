"""AdaRound (Nagel et al., ICML 2020): learn, per weight, whether it rounds down or up.

Each weight ``w`` on a grid of step ``S`` and zero-point ``z`` gets a variable ``V``; its code is
``clamp(floor(w/S) + z + h(V), qmin, qmax)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1`` (the
stretch lets ``h`` reach 0 and 1 exactly). ``V`` starts where ``h(V)`` equals the fractional part of
``w/S`` (the soft weight equals the float weight), and the regularizer
``sum 1 - |2 h(V) - 1|^beta``, with ``beta`` annealed from 20 to 2 after a warm-up, drives every
``h`` to 0 or 1; at the end ``h`` becomes the step ``V >= 0``. Rounding is thus a choice between
floor and ceiling, never a move further away.
"""

from __future__ import annotations

import math

import torch

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) in [0, 1]: the soft rounding offset."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_rounding(rest: torch.Tensor) -> torch.Tensor:
    """The V with h(V) = ``rest`` (the fractional part of w/S, in [0, 1)):
    sigmoid(V) = (rest - gamma) / (zeta - gamma)."""
    p = (rest - GAMMA) / (ZETA - GAMMA)
    return torch.log(p) - torch.log1p(-p)


def rounding_at_nearest(x: torch.Tensor) -> torch.Tensor:
    """The V that start values ``x`` (w/S): h(V) = frac(x), and V >= 0 exactly where round-to-nearest (ties to
    even) rounds up. Near a tie h(V) is 1/2 to float precision and the sign of V would be noise: it is set
    to nearest's choice, moving h by under 1e-6."""
    down = torch.floor(x)
    v = initial_rounding(x - down)
    return torch.where(torch.round(x) > down, v.clamp(min=0.0), v.clamp(max=-1e-6))


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """sum over weights of 1 - |2 h(V) - 1|^beta: zero exactly when every h is 0 or 1."""
    return (1.0 - (2.0 * rectified_sigmoid(v) - 1.0).abs().pow(beta)).sum()


def beta_schedule(step: int, iters: int, warmup: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """AdaRound's annealing: None (no regularizer) during the first ``warmup`` of the steps, then beta
    falling linearly from ``start`` to ``end``."""
    first = math.ceil(warmup * iters)
    if step < first:
        return None
    span = max(1, iters - first)
    return end + (start - end) * max(0.0, 1.0 - (step - first) / span)
