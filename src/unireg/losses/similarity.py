"""Similarity terms.  Feature-space MSE is modality independent when the features are (MIND, local)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over voxels of the squared feature difference ``(B, C, *S)``, averaged over channels."""
    d = (a - b).pow(2).mean(dim=1, keepdim=True)
    if mask is None:
        return d.mean()
    return (d * mask).sum() / mask.sum().clamp_min(1.0)


def feature_mse_each(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`feature_mse` of each batch item on its own, ``(B,)``: items optimised side by side
    (a sum of these keeps their gradients apart)."""
    d = (a - b).pow(2).mean(dim=1, keepdim=True) * mask
    m = mask.expand_as(d)
    return d.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def dice_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over channels of one-hot/probability maps ``(B, L, *S)``."""
    dims = tuple(range(2, a.dim()))
    inter = (a * b).sum(dims)
    denom = a.sum(dims) + b.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def local_ncc(a: torch.Tensor, b: torch.Tensor, win: int = 7, eps: float = 1e-5) -> torch.Tensor:
    """Negative local normalised cross-correlation (VoxelMorph's NCC) of single-channel images."""
    nd = a.dim() - 2
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    pad = win // 2
    mu_a = pool(a, win, 1, pad, count_include_pad=False)
    mu_b = pool(b, win, 1, pad, count_include_pad=False)
    var_a = pool(a * a, win, 1, pad, count_include_pad=False) - mu_a**2
    var_b = pool(b * b, win, 1, pad, count_include_pad=False) - mu_b**2
    cov = pool(a * b, win, 1, pad, count_include_pad=False) - mu_a * mu_b
    cc = cov * cov / (var_a.clamp_min(eps) * var_b.clamp_min(eps))
    return -cc.mean()
