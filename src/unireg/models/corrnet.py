"""Coarse-to-fine deformation network on local cost volumes of the frozen features.

Why (measured, see ``weights/unireg_3d.md``): a one-conv-per-level UNet fed with the concatenated
fixed and moving features has to *discover* matching by itself; in 3-D it did not (flat loss),
although the per-pair optimum of the same loss was far below it.  Here matching is explicit, as in
PWC-Net, PDD-Net and ConvexAdam: at each level of an average-pooled pyramid of the frozen features,
the moving features are warped by the current estimate and compared with the fixed ones over a
small window of displacements (sum of squared differences, normalised per voxel), and a small
FiLM-conditioned CNN turns that cost volume (plus context: the fixed features and the upsampled
hidden state) into a residual update of the field.  Levels: 1/8, 1/4, 1/2 of the input; the
velocity is the finest estimate, at 1/2 (as the UNet's), in voxels of its grid.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spatial.grid import resize_field, warp
from .unet import _Block, _conv, encode_smoothness

__all__ = ["CorrNet", "local_cost"]


def local_cost(fixed: torch.Tensor, moving: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume ``(B, (2r+1)**nd, *S)``: mean over channels of ``(f(x) - m(x + d))**2`` for every
    integer offset ``d`` in ``[-r, r]**nd`` (array-axis order, offsets in itertools.product order),
    divided by its mean over the offsets (contrast of the features does not matter) and negated."""
    nd = fixed.dim() - 2
    r = int(radius)
    pad = F.pad(moving, [r] * (2 * nd), mode="replicate")
    spatial = fixed.shape[2:]
    costs = []
    for off in itertools.product(range(-r, r + 1), repeat=nd):
        sl = (slice(None), slice(None)) + tuple(slice(r + o, r + o + n) for o, n in zip(off, spatial))
        costs.append((fixed - pad[sl]).pow(2).mean(dim=1))
    c = torch.stack(costs, dim=1)
    return -c / c.mean(dim=1, keepdim=True).clamp_min(1e-6)


class CorrNet(nn.Module):
    """Features ``(B, C, *S)`` of fixed and moving images -> velocity ``(B, nd, *ceil(S/2))``.

    Parameters
    ----------
    ndim : 2 or 3.
    in_channels : channels of one feature map.
    width : channels of the per-level CNNs, coarse to fine (three levels: 1/8, 1/4, 1/2).
    radius : search radius (voxels of each level) of the cost volumes, coarse to fine.
    convs : 3x3(x3) convolutions per level.
    """

    arch = "corr"

    def __init__(self, ndim: int, in_channels: int, width: Sequence[int] = (32, 32, 32),
                 radius: Sequence[int] = (2, 2, 1), convs: int = 2, cond_dim: int = 32):
        super().__init__()
        if len(width) != 3 or len(radius) != 3:
            raise ValueError("CorrNet has three levels: width and radius need three entries each")
        self.ndim = ndim
        self.config = dict(ndim=ndim, in_channels=in_channels, arch="corr", width=list(width), radius=list(radius),
                           convs=int(convs), cond_dim=cond_dim)
        self.radius = [int(r) for r in radius]
        self.cond = nn.Sequential(nn.Linear(1, cond_dim), nn.LeakyReLU(0.2), nn.Linear(cond_dim, cond_dim), nn.LeakyReLU(0.2))
        self.levels = nn.ModuleList()
        self.heads = nn.ModuleList()
        prev = 0
        for w, r in zip(width, self.radius):
            cin = (2 * r + 1) ** ndim + in_channels + prev + (ndim if prev else 0)
            blocks = [_Block(ndim, cin, w, 1, cond_dim)] + [_Block(ndim, w, w, 1, cond_dim) for _ in range(convs - 1)]
            self.levels.append(nn.ModuleList(blocks))
            head = _conv(ndim)(w, ndim, 3, padding=1)
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
            self.heads.append(head)
            prev = w

    @property
    def multiple(self) -> int:
        return 8

    def forward(self, fixed_feat: torch.Tensor, moving_feat: torch.Tensor, smoothness: torch.Tensor) -> torch.Tensor:
        nd = self.ndim
        shape = fixed_feat.shape[2:]
        pad = []
        for n in reversed(shape):
            pad += [0, (-n) % self.multiple]
        if any(pad):
            fixed_feat = F.pad(fixed_feat, pad, mode="replicate")
            moving_feat = F.pad(moving_feat, pad, mode="replicate")
        pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
        pyr_f, pyr_m = [], []
        f, m = fixed_feat, moving_feat
        for _ in range(3):
            f, m = pool(f, 2), pool(m, 2)
            pyr_f.append(f)
            pyr_m.append(m)
        pyr_f, pyr_m = pyr_f[::-1], pyr_m[::-1]  # 1/8, 1/4, 1/2
        cond = self.cond(encode_smoothness(smoothness.to(fixed_feat.dtype)).view(-1, 1))
        mode = "bilinear" if nd == 2 else "trilinear"
        flow = hidden = None
        for lvl, (blocks, head) in enumerate(zip(self.levels, self.heads)):
            f, m = pyr_f[lvl], pyr_m[lvl]
            parts = []
            if flow is not None:
                flow = resize_field(flow, f.shape[2:])
                hidden = F.interpolate(hidden, size=f.shape[2:], mode=mode, align_corners=False)
                m = warp(m, flow, padding_mode="border")
            parts.append(local_cost(f, m, self.radius[lvl]))
            parts.append(f)
            if flow is not None:
                parts += [hidden, flow]
            h = torch.cat(parts, dim=1)
            for blk in blocks:
                h = blk(h, cond)
            hidden = h
            delta = head(h)
            flow = delta if flow is None else flow + delta
        out_shape = [math.ceil(n / 2) for n in shape]
        return flow[(slice(None), slice(None)) + tuple(slice(0, n) for n in out_shape)]
