"""Object (foreground) masks for the affine starts: the image's own Otsu threshold.

A fixed threshold on the normalised intensity is not enough across scanners: noise and bias inside a
moving image's field of view can sit above it, and the "foreground" centroid then becomes the centroid
of the field of view (seen on a noisy T2-like label phantom, 16 mm off).  Otsu's threshold (the one
that maximises the between-class variance of the intensity histogram, as ITK's ``OtsuThreshold``)
adapts to each image.
"""

from __future__ import annotations

import torch

__all__ = ["otsu_threshold"]


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
