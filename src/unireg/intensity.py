"""Intensity normalisation: the one percentile-rescaling routine (torch, any device) and its NumPy wrapper.

Every caller that maps intensities to ``[0, 1]`` goes through :func:`percentile_rescale`:
the pipeline's input normalisation (:func:`normalize_intensity`, 0.5..99.5 % of the non-zero
voxels), the feature extractors (1..99 % of every voxel), and the MNI template loader (99.5 % -> 1,
no shift).  See ``docs/conventions.md``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["percentile_rescale", "normalize_intensity", "normalize_tensor", "MAX_SAMPLES"]

#: Percentiles are taken on a regular subsample of at most about this many voxels per item (the
#: figures agree to ~0.1 %, sorting is 8x cheaper, and torch.quantile refuses > 16 M elements).
MAX_SAMPLES = 1 << 20


def _item_values(flat: torch.Tensor, nonzero: bool) -> torch.Tensor:
    if not nonzero:
        return flat
    nz = flat[flat != 0]
    return nz if nz.numel() > 0.01 * flat.numel() else flat  # mostly-zero image: use every voxel


def percentile_rescale(
    image: torch.Tensor,
    lower: float | None = 1.0,
    upper: float = 99.0,
    *,
    clip: bool | str = True,
    nonzero: bool = False,
    max_samples: int = MAX_SAMPLES,
) -> torch.Tensor:
    """Map each batch item's ``lower``..``upper`` percentile range linearly onto ``[0, 1]``.

    Parameters
    ----------
    image : ``(B, C, *spatial)`` tensor (any device); percentiles over all channels and voxels of an item.
    lower, upper : percentiles (0-100).  ``lower=None`` keeps 0 at 0 (scale only: ``x / P_upper``).
    clip : ``True`` clamps to ``[0, 1]``, ``"low"`` only at 0, ``False`` not at all.
    nonzero : take the percentiles over the non-zero voxels (unless they are under 1 % of the item).
    max_samples : percentiles on a regular subsample of ``N // (N // max_samples)`` voxels.

    The percentiles are constants (detached): the gradient w.r.t. the image is the plain linear (and
    clamped) map, which keeps instance optimisation well behaved.  Where the percentile range is empty
    the item's min..max is used; a constant item maps to zeros.
    """
    b = image.shape[0]
    flat = image.detach().reshape(b, -1)
    flat = flat[:, :: max(1, flat.shape[1] // max_samples)]
    if not flat.is_floating_point():
        flat = flat.float()
    lo = torch.zeros(b, dtype=flat.dtype, device=flat.device)
    hi = torch.zeros_like(lo)
    qs = torch.tensor([0.0 if lower is None else lower / 100.0, upper / 100.0], dtype=flat.dtype, device=flat.device)
    for i in range(b):
        vals = _item_values(flat[i], nonzero)
        q = torch.quantile(vals, qs)
        lo_i = torch.zeros_like(q[0]) if lower is None else q[0]
        hi_i = q[1]
        if not bool(hi_i > lo_i):  # empty percentile range: min..max of the whole item
            whole = image[i].detach()
            lo_i = torch.zeros_like(q[0]) if lower is None else whole.min().to(flat.dtype)
            hi_i = whole.max().to(flat.dtype)
        lo[i], hi[i] = lo_i, hi_i
    shape = (b,) + (1,) * (image.dim() - 1)
    lo, hi = lo.view(shape), hi.view(shape)
    if clip not in (True, False, "low"):
        raise ValueError(f"clip must be True, False or 'low', got {clip!r}")
    ok = hi > lo
    # 1 / range where there is one, 0 (a constant item maps to zeros) where there is none
    inv = torch.where(ok, 1.0 / torch.where(ok, hi - lo, torch.ones_like(hi)), torch.zeros_like(hi))
    out = image - lo
    if out.requires_grad:  # autograd: out-of-place
        out = out * inv
        return out.clamp(0.0, 1.0) if clip is True else out.clamp_min(0.0) if clip == "low" else out
    out.mul_(inv)  # in place: one temporary the size of the image (large volumes)
    if clip is True:
        out.clamp_(0.0, 1.0)
    elif clip == "low":
        out.clamp_min_(0.0)
    return out


def normalize_tensor(x: torch.Tensor, low: float = 0.5, high: float = 99.5,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """``low``/``high`` percentiles of the non-zero voxels of ``x`` (any shape, any device) go to 0/1,
    clipped; a new float32 tensor of the same shape on the same device (a constant image gives zeros).

    ``mask`` (same number of elements, nonzero = use): percentiles from the voxels inside it only, so a
    bright artefact outside a user's mask does not squash the anatomy's intensity range.
    """
    x = x.float()
    if mask is not None:
        inside = mask.reshape(x.shape).to(x.device) != 0
        if bool(inside.any()):
            ref = x[inside]
            lo_hi = percentile_rescale(ref.reshape(1, 1, -1), low, high, nonzero=True, clip=False)
            # the mask's percentile map (affine, unclipped), read off two of its values, applied to all
            i_min, i_max = int(torch.argmin(ref)), int(torch.argmax(ref))
            a, b = float(ref[i_min]), float(ref[i_max])
            fa, fb = float(lo_hi.reshape(-1)[i_min]), float(lo_hi.reshape(-1)[i_max])
            if b > a and fb != fa:
                scale = (fb - fa) / (b - a)
                return ((x - a) * scale + fa).clamp_(0.0, 1.0)
    return percentile_rescale(x.reshape(1, 1, -1), low, high, nonzero=True).reshape(x.shape)  # a new tensor


def normalize_intensity(data: np.ndarray, low: float = 0.5, high: float = 99.5,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """NumPy wrapper of :func:`normalize_tensor`: float32 of ``data``'s shape."""
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    m = None if mask is None else torch.from_numpy(np.asarray(mask))
    return normalize_tensor(x, low, high, m).numpy()
