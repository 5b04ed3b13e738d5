"""Test-time instance optimisation of the velocity field on frozen features (``--refine N``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import feature_mse, gradient_l2
from .optim import Adam
from ..spatial.grid import resize_field, warp
from ..spatial.integrate import integrate_velocity

__all__ = ["refine_velocity", "REG_SCALE"]

# Regulariser weight per unit of user smoothness; chosen so that smoothness=1 keeps folding near zero
# on the MNI demo pair (see README, "smoothness").
REG_SCALE = 0.5


def _to_grid(feat: torch.Tensor, shape) -> torch.Tensor:
    if tuple(feat.shape[2:]) == tuple(shape):
        return feat
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(feat, size=tuple(shape), mode=mode, align_corners=True)


def refine_velocity(
    velocity: torch.Tensor,
    fixed_feat: torch.Tensor,
    moving_feat: torch.Tensor,
    iterations: int,
    smoothness: float = 1.0,
    lr: float = 0.1,
    int_steps: int = 7,
) -> torch.Tensor:
    """Optimise a velocity ``(1, ndim, *S_v)`` (voxels of its own grid) so that the moving features,
    pulled through ``exp(velocity)``, match the fixed features.

    The loss is evaluated on the velocity's grid (features averaged down to it), which keeps each
    iteration cheap; the regulariser is the diffusion energy of the displacement.
    """
    if iterations <= 0:
        return velocity
    shape = velocity.shape[2:]
    ff = _to_grid(fixed_feat, shape).detach()
    fm = _to_grid(moving_feat, shape).detach()
    v = velocity.detach().clone().requires_grad_(True)
    opt = Adam([v], lr=lr)
    lam = REG_SCALE * float(smoothness)
    for _ in range(int(iterations)):
        opt.zero_grad()
        disp = integrate_velocity(v, int_steps)
        loss = feature_mse(ff, warp(fm, disp)) + lam * gradient_l2(disp)
        loss.backward()
        opt.step()
    return v.detach()
