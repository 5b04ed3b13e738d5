"""Anti-aliased resampling onto the working grid (``normalize_intensity`` lives in :mod:`unireg.intensity`).
Both run on the image tensor's own device: a GPU registration's preprocessing never leaves the card."""

from __future__ import annotations

import numpy as np
import torch

from .intensity import normalize_intensity
from .spatial.frames import spacing
from .spatial.smooth import gaussian_filter
from .spatial.world import pull

__all__ = ["normalize_intensity", "presmooth", "to_working_grid", "as_tensor"]

#: Gaussian kernels end at this many standard deviations (scipy's ``truncate``).
TRUNCATE = 2.5


def as_tensor(data) -> torch.Tensor:
    """``data`` (array or tensor) as a float32 tensor (no copy where it already is one)."""
    if torch.is_tensor(data):
        return data if data.dtype == torch.float32 else data.float()
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def presmooth(data, spacing_in, out_spacing: float) -> torch.Tensor:
    """``data`` ``(*S)`` (array or tensor) Gaussian-smoothed for resampling at ``out_spacing`` mm
    (anti-aliasing; unchanged when it does not coarsen): sigma ``0.5 (out / in - 1)`` voxels per axis of
    the input, the border value repeated outside.  A float32 tensor on ``data``'s device."""
    sigma = [max(0.0, 0.5 * (out_spacing / s - 1.0)) if out_spacing > s else 0.0 for s in spacing_in]
    t = as_tensor(data)
    if any(s > 0.2 for s in sigma):
        return gaussian_filter(t, sigma, truncate=TRUNCATE)
    return t


def to_working_grid(
    data,
    affine4: np.ndarray,
    spacing_in: np.ndarray,
    out_shape,
    out_affine4,
    world_map=None,
    smoothed: bool = False,
) -> torch.Tensor:
    """Resample one image ``(*S)`` (array, or tensor on any device) onto the working grid, Gaussian
    pre-smoothing when it coarsens (``smoothed``: ``data`` is :func:`presmooth`'s already, e.g. one copy
    for several grids).

    Returns ``(1, *out_shape)`` float32 on ``data``'s device (the CPU for an array).
    """
    t = as_tensor(data) if smoothed else presmooth(data, spacing_in, float(spacing(out_affine4, 1)[0]))
    return pull(t[None], affine4, out_shape, out_affine4, world_map=world_map)
