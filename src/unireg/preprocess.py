"""Anti-aliased resampling onto the working grid (``normalize_intensity`` lives in :mod:`unireg.intensity`).
Both run on the image tensor's own device: a GPU registration's preprocessing never leaves the card."""

from __future__ import annotations

import numpy as np
import torch

from .intensity import normalize_intensity
from .spatial.frames import spacing
from .spatial.smooth import gaussian_filter
from .spatial.world import pull

__all__ = ["normalize_intensity", "presmooth", "to_working_grid", "as_tensor", "object_box"]

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


def object_box(image: torch.Tensor, margin_vox: int, mask: torch.Tensor | None = None,
               tail: float = 1e-3, min_saving: float = 0.1) -> tuple[slice, ...] | None:
    """The box (one slice per axis) around the object of ``image`` ``(*S)``, ``margin_vox`` voxels wider on
    every side (clipped to the grid), or None when it would keep more than ``1 - min_saving`` of the grid.

    The object: ``mask`` where given (nonzero), else the voxels above half of the image's Otsu threshold
    (air and background noise lie below it in MR and CT alike).  Per axis the box leaves out the first and
    last ``tail`` of the object's voxels, so that stray bright background voxels (noise, ghosts) do not
    widen it; the margin covers what that leaves out at an object's edges."""
    from .align.foreground import otsu_threshold

    obj = mask.bool() if mask is not None else image > 0.5 * otsu_threshold(image)
    total = obj.sum()
    if not bool(total > 0):
        return None
    box, kept = [], 1.0
    for ax, n in enumerate(obj.shape):
        other = tuple(a for a in range(obj.ndim) if a != ax)
        cum = torch.cumsum(obj.sum(dim=other), 0).double() / total
        lo = int((cum <= tail).sum())
        hi = int((cum < 1.0 - tail).sum()) + 1
        lo, hi = max(0, lo - margin_vox), min(n, hi + margin_vox)
        box.append(slice(lo, hi))
        kept *= (hi - lo) / n
    return tuple(box) if kept <= 1.0 - min_saving else None
