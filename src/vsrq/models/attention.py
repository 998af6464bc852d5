"""Attention as a module, so that hooks (operation counting, calibration) can see its two matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DotProductAttention(nn.Module):
    """softmax(QK^T / sqrt(d)) V on ``(batch, heads, tokens, head_dim)`` tensors; no parameters.

    The products QK^T and AV have no weights, so no Conv/Linear hook reports them; a module
    boundary lets an inventory count them apart.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)
