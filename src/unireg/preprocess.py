"""Intensity preprocessing and anti-aliased resampling onto the working grid."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .spatial.world import pull

__all__ = ["normalize_intensity", "to_working_grid"]


def normalize_intensity(data: np.ndarray, low: float = 0.5, high: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Robust min-max: the ``low``/``high`` percentiles of the non-zero voxels go to 0/1, clipped.

    ``mask`` (same shape, nonzero = use): percentiles from the voxels inside it only, so a bright
    artefact outside a user's mask does not squash the anatomy's intensity range.
    """
    x = np.asarray(data, dtype=np.float32)
    # percentiles of a regular subsample (~1 M voxels): same figures to ~0.1 %, 8x less sorting
    step = max(1, x.size // 1_000_000)
    sub = x.ravel()[::step]
    if mask is not None:
        keep = np.asarray(mask).ravel()[::step] != 0
        if keep.any():
            sub = sub[keep]
    vals = sub[sub != 0] if np.count_nonzero(sub) > 0.01 * sub.size else sub
    lo, hi = np.percentile(vals, [low, high]) if vals.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    out = x - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def to_working_grid(
    data: np.ndarray, affine4: np.ndarray, spacing_in: np.ndarray, out_shape, out_affine4, world_map=None
) -> torch.Tensor:
    """Resample one image ``(*S)`` onto the working grid, Gaussian pre-smoothing when it coarsens.

    Returns ``(1, *out_shape)`` float32.
    """
    out_spacing = float(np.linalg.norm(np.asarray(out_affine4)[:3, 0]))
    sigma = [max(0.0, 0.5 * (out_spacing / s - 1.0)) if out_spacing > s else 0.0 for s in spacing_in]
    if any(s > 0.2 for s in sigma):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest", truncate=2.5)
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    return pull(t, affine4, out_shape, out_affine4, world_map=world_map)
