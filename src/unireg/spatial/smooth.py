"""Gaussian smoothing of an image tensor on its own device (the pipeline's anti-aliasing before a
coarser grid): the kernel and border of ``scipy.ndimage.gaussian_filter(mode="nearest")``, separable,
as a weighted sum of shifted views added in place (elementwise passes that run threaded on a CPU and
stay on a GPU, no host round trip; one new volume per axis, no padded copy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["gaussian_kernel1d", "gaussian_filter"]


def gaussian_kernel1d(sigma: float, truncate: float) -> list[float]:
    """Normalised Gaussian weights, radius ``int(truncate * sigma + 0.5)`` (scipy's rule), in double."""
    r = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 / float(sigma) ** 2 * x**2)
    return (w / w.sum()).tolist()


def gaussian_filter(image: torch.Tensor, sigma: Sequence[float], truncate: float = 4.0) -> torch.Tensor:
    """``image`` ``(*S)`` smoothed along each axis ``i`` with a Gaussian of ``sigma[i]`` voxels (0: that
    axis untouched), the border value repeated outside (scipy's ``mode="nearest"``).  A new float tensor
    on ``image``'s device; float32 accumulation (scipy's, in double, agrees to ~1e-6 of the range)."""
    if len(sigma) != image.dim():
        raise ValueError(f"one sigma per axis: {len(sigma)} for a {image.dim()}-D image")
    out = image if image.is_floating_point() else image.float()
    for axis, s in enumerate(sigma):
        if float(s) <= 1e-15:  # scipy skips such axes
            continue
        w = gaussian_kernel1d(float(s), truncate)
        r = len(w) // 2
        n = out.shape[axis]
        first, last = out.narrow(axis, 0, 1), out.narrow(axis, n - 1, 1)
        acc = out * w[r]  # the one new tensor of this axis: shifted views added in place, no padded copy
        for k in range(1, r + 1):
            m = min(k, n)  # voxels within k of an end read the repeated border value
            if n > m:
                acc.narrow(axis, 0, n - m).add_(out.narrow(axis, m, n - m), alpha=w[r + k])
                acc.narrow(axis, m, n - m).add_(out.narrow(axis, 0, n - m), alpha=w[r - k])
            acc.narrow(axis, n - m, m).add_(last, alpha=w[r + k])
            acc.narrow(axis, 0, m).add_(first, alpha=w[r - k])
        out = acc
    return out if out is not image else image.clone()
