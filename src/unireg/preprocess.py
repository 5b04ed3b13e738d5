"""Anti-aliased resampling onto the working grid (``normalize_intensity`` lives in :mod:`unireg.intensity`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .intensity import normalize_intensity
from .spatial.frames import spacing
from .spatial.world import pull

__all__ = ["normalize_intensity", "presmooth", "to_working_grid"]


def presmooth(data: np.ndarray, spacing_in, out_spacing: float) -> np.ndarray:
    """``data`` Gaussian-smoothed for resampling at ``out_spacing`` mm (anti-aliasing; unchanged when
    it does not coarsen): sigma ``0.5 (out / in - 1)`` voxels per axis of the input."""
    sigma = [max(0.0, 0.5 * (out_spacing / s - 1.0)) if out_spacing > s else 0.0 for s in spacing_in]
    if any(s > 0.2 for s in sigma):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest", truncate=2.5)
    return data


def to_working_grid(
    data: np.ndarray,
    affine4: np.ndarray,
    spacing_in: np.ndarray,
    out_shape,
    out_affine4,
    world_map=None,
    smoothed: bool = False,
) -> torch.Tensor:
    """Resample one image ``(*S)`` onto the working grid, Gaussian pre-smoothing when it coarsens
    (``smoothed``: ``data`` is :func:`presmooth`'s already, e.g. one copy for several grids).

    Returns ``(1, *out_shape)`` float32.
    """
    if not smoothed:
        data = presmooth(data, spacing_in, float(spacing(out_affine4, 1)[0]))  # working grids are isotropic
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    return pull(t, affine4, out_shape, out_affine4, world_map=world_map)
