"""Synthesis of known deformations, contrast changes, bias fields and noise (seeded, reproducible).

Ground truth.  :func:`random_velocity` gives a smooth stationary velocity ``v`` (voxels).  A moving
image made as ``moving = warp(fixed, exp(-v))`` is registered onto ``fixed`` exactly by the
fixed->moving map ``x + exp(v)(x)``, so ``exp(v)`` is the true ``disp_vox`` of ``warp.nii.gz``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..spatial.grid import resize_field, warp
from ..spatial.integrate import integrate_velocity

__all__ = [
    "random_velocity",
    "deform_pair_field",
    "remap_contrast",
    "bias_field",
    "add_noise",
    "CONTRASTS",
]

# Piecewise-linear intensity maps from a [0, 1] T1 (CSF ~0.15-0.3, GM ~0.55-0.7, WM ~0.85-1.0).
CONTRASTS: dict[str, tuple[list[float], list[float]]] = {
    "t1": ([0.0, 1.0], [0.0, 1.0]),
    "t2": ([0.0, 0.08, 0.25, 0.5, 0.7, 0.9, 1.0], [0.0, 0.35, 1.0, 0.75, 0.55, 0.3, 0.25]),
    "pd": ([0.0, 0.08, 0.25, 0.5, 0.7, 0.9, 1.0], [0.0, 0.5, 0.9, 0.85, 0.8, 0.6, 0.55]),
    "flair": ([0.0, 0.08, 0.25, 0.5, 0.7, 0.9, 1.0], [0.0, 0.1, 0.12, 0.6, 0.75, 0.45, 0.4]),
    "ct": ([0.0, 0.05, 0.15, 0.3, 0.6, 1.0], [0.0, 0.9, 0.35, 0.38, 0.42, 0.4]),
}


def random_velocity(shape, max_disp_vox: float, seed: int, control: int = 6, device=None) -> torch.Tensor:
    """Smooth random velocity ``(1, ndim, *shape)`` in voxels: random control points upsampled cubically,
    scaled so that the integrated displacement's maximum magnitude is about ``max_disp_vox``."""
    g = torch.Generator().manual_seed(int(seed))
    nd = len(shape)
    ctrl = torch.randn((1, nd) + (control,) * nd, generator=g)
    mode = "bilinear" if nd == 2 else "trilinear"
    v = F.interpolate(ctrl, size=tuple(shape), mode=mode, align_corners=True)
    disp = integrate_velocity(v)
    peak = disp.norm(dim=1).max().clamp_min(1e-6)
    v = v * (max_disp_vox / peak)
    # one correction step: integration is not linear in the scale
    peak = integrate_velocity(v).norm(dim=1).max().clamp_min(1e-6)
    return (v * (max_disp_vox / peak)).to(device) if device else v * (max_disp_vox / peak)


def deform_pair_field(velocity: torch.Tensor, out_shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(disp_true, disp_pull)``: the true fixed->moving displacement ``exp(v)`` and the field
    ``exp(-v)`` that makes the moving image from the fixed one, integrated on the velocity's grid and
    carried to ``out_shape`` (voxels of that grid) when given."""
    fwd, inv = integrate_velocity(velocity), integrate_velocity(-velocity)
    if out_shape is not None:
        fwd, inv = resize_field(fwd, out_shape), resize_field(inv, out_shape)
    return fwd, inv


def coarse_shape(shape, factor: int = 4) -> tuple[int, ...]:
    """The grid a smooth synthetic velocity is drawn on: ``ceil((n - 1) / factor) + 1`` per axis."""
    return tuple(int(np.ceil((n - 1) / factor)) + 1 for n in shape)


def remap_contrast(image: torch.Tensor, kind: str) -> torch.Tensor:
    """Apply one of :data:`CONTRASTS` to a [0,1]-scaled T1 (any shape)."""
    xs, ys = CONTRASTS[kind]
    x = image.clamp(0, 1)
    xs_t = torch.tensor(xs, dtype=x.dtype)
    ys_t = torch.tensor(ys, dtype=x.dtype)
    idx = torch.clamp(torch.searchsorted(xs_t, x.contiguous(), right=True) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs_t[idx], xs_t[idx + 1], ys_t[idx], ys_t[idx + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def bias_field(shape, strength: float, seed: int) -> torch.Tensor:
    """Smooth multiplicative field ``exp(s * smooth noise)`` of ``shape``."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    nd = len(shape)
    ctrl = torch.randn((1, 1) + (4,) * nd, generator=g)
    mode = "bilinear" if nd == 2 else "trilinear"
    f = F.interpolate(ctrl, size=tuple(shape), mode=mode, align_corners=True)[0, 0]
    return torch.exp(strength * f / f.abs().max().clamp_min(1e-6))


def add_noise(image: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) + 104729)
    return image + sigma * torch.randn(image.shape, generator=g)


def make_moving(
    t1: torch.Tensor, velocity: torch.Tensor, contrast: str = "t2", bias: float = 0.2, noise: float = 0.02, seed: int = 0
) -> torch.Tensor:
    """A deformed, contrast-remapped, biased, noisy copy of ``t1`` ``(*S)``: ``(*S)``.

    ``velocity`` may live on a coarser grid (see :func:`coarse_shape`)."""
    _, pull_field = deform_pair_field(velocity, t1.shape)
    moved = warp(t1[None, None], pull_field)[0, 0]
    img = remap_contrast(moved, contrast) * bias_field(t1.shape, bias, seed)
    return add_noise(img, noise, seed).clamp_min(0)
