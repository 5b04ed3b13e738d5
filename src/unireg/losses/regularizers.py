"""Regularisers of displacement / velocity fields."""

from __future__ import annotations

import torch


def gradient_l2(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of ``field`` ``(B, C, *spatial)`` over all axes (diffusion energy)."""
    nd = field.dim() - 2
    total = field.new_zeros(())
    for ax in range(2, 2 + nd):
        d = torch.diff(field, dim=ax)
        total = total + (d * d).mean()
    return total / nd
