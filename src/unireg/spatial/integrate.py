"""Scaling and squaring: stationary velocity field -> diffeomorphic displacement."""

from __future__ import annotations

import torch

from .grid import exp_velocity, warp

__all__ = ["integrate_velocity", "compose"]


def compose(disp_a: torch.Tensor, disp_b: torch.Tensor) -> torch.Tensor:
    """Displacement of ``x -> b(a(x))`` ... in pull form: ``a(x) + b(x + a(x))``.

    Both ``(B, ndim, *spatial)`` in voxels of the same grid.  Applying the result to an image
    equals pulling it through ``disp_b`` first and then ``disp_a`` (i.e. ``I(x + a + b(x + a))``).
    """
    return disp_a + warp(disp_b, disp_a, padding_mode="border")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Integrate ``velocity`` ``(B, ndim, *spatial)`` (voxel units) over unit time by scaling and squaring.

    Returns the displacement ``disp_vox`` of ``exp(velocity)``.  ``steps=0`` returns the velocity.
    """
    if steps <= 0:
        return velocity
    return exp_velocity(velocity, steps)
