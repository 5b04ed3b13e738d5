"""Anti-aliased resampling onto the working grid (``normalize_intensity`` lives in :mod:`unireg.intensity`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .intensity import normalize_intensity
from .spatial.frames import spacing
from .spatial.world import pull

__all__ = ["normalize_intensity", "to_working_grid"]


def to_working_grid(
    data: np.ndarray, affine4: np.ndarray, spacing_in: np.ndarray, out_shape, out_affine4, world_map=None
) -> torch.Tensor:
    """Resample one image ``(*S)`` onto the working grid, Gaussian pre-smoothing when it coarsens.

    Returns ``(1, *out_shape)`` float32.
    """
    out_spacing = float(spacing(out_affine4, 1)[0])  # working grids are isotropic
    sigma = [max(0.0, 0.5 * (out_spacing / s - 1.0)) if out_spacing > s else 0.0 for s in spacing_in]
    if any(s > 0.2 for s in sigma):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest", truncate=2.5)
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    return pull(t, affine4, out_shape, out_affine4, world_map=world_map)
