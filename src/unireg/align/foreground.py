"""Object (foreground) masks for the affine starts and the working grid's box: the image's own Otsu threshold.

A fixed threshold on the normalised intensity is not enough across scanners: noise and bias inside a
moving image's field of view can sit above it, and the "foreground" centroid then becomes the centroid
of the field of view (seen on a noisy T2-like label phantom, 16 mm off).  Otsu's threshold (the one
that maximises the between-class variance of the intensity histogram, as ITK's ``OtsuThreshold``)
adapts to each image.
"""

from __future__ import annotations

import torch

__all__ = ["otsu_threshold", "object_box"]


def otsu_threshold(image: torch.Tensor, bins: int = 128) -> float:
    """Otsu's threshold of the finite values of ``image`` (any shape, any device)."""
    x = image.detach().reshape(-1).float()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return 0.0
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return lo
    hist = torch.histc(x, bins=bins, min=lo, max=hi).double()
    centres = lo + (torch.arange(bins, dtype=torch.float64, device=hist.device) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)  # voxels at or below each bin
    m0 = (hist * centres).cumsum(0)
    total, mean_total = w0[-1], m0[-1]
    w1 = total - w0
    between = (mean_total * w0 / total - m0) ** 2 / (w0 * w1).clamp_min(1e-12) * total
    between[(w0 == 0) | (w1 == 0)] = -1.0
    k = int(torch.argmax(between))
    return float(lo + (k + 1) * (hi - lo) / bins)  # upper edge of the last background bin


def object_box(image: torch.Tensor, margin_vox: int, mask: torch.Tensor | None = None,
               tail: float = 1e-3, min_saving: float = 0.1) -> tuple[slice, ...] | None:
    """The box (one slice per axis) around the object of ``image`` ``(*S)``, ``margin_vox`` voxels wider on
    every side (clipped to the grid), or None when it would keep more than ``1 - min_saving`` of the grid.

    The object: ``mask`` where given (nonzero), else the voxels above half of the image's Otsu threshold
    (air and background noise lie below it in MR and CT alike).  Per axis the box leaves out the first and
    last ``tail`` of the object's voxels, so that stray bright background voxels (noise, ghosts) do not
    widen it; the margin covers what that leaves out at an object's edges."""
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
