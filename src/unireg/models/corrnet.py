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


def _offsets(nd: int, r: int) -> torch.Tensor:
    """``((2r+1)**nd, nd)`` integer offsets in the order of :func:`local_cost`'s channels."""
    return torch.tensor(list(itertools.product(range(-r, r + 1), repeat=nd)), dtype=torch.float32)


def soft_argmin(cost: torch.Tensor, radius: int, beta: torch.Tensor) -> torch.Tensor:
    """Expected offset ``(B, nd, *S)`` under ``softmax(beta * cost)`` over the window (PDD-Net's and
    ConvexAdam's parameter-free readout of a cost volume), in voxels of the cost volume's grid."""
    nd = cost.dim() - 2
    prob = torch.softmax(beta * cost, dim=1)
    off = _offsets(nd, radius).to(cost)
    return torch.einsum("bk...,kd->bd...", prob, off)


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
        sl = (slice(None), slice(None)) + tuple(slice(r + o, r + o + n) for o, n in zip(off, spatial, strict=True))
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
    out_scale : head output -> finest-grid voxels (per unit).  Adam moves every head weight by ~lr
        at once, so unscaled heads (1.0) took multi-voxel first steps at lr 2e-3 without warm-up.
    soft_argmin : also feed (and add, through a learned gate starting at 0) the cost volume's
        soft-argmin.  Off by default: as a direct readout it lowered Dice (0.830 -> 0.767 at gate 1,
        untrained, 48^3 crops at 2 mm): pooled MIND costs are too ambiguous on their own.
    """

    arch = "corr"

    def __init__(self, ndim: int, in_channels: int, width: Sequence[int] = (32, 32, 32),
                 radius: Sequence[int] = (2, 2, 1), convs: int = 2, cond_dim: int = 32, soft_argmin: bool = False,
                 out_scale: float = 0.1):
        super().__init__()
        if len(width) != 3 or len(radius) != 3:
            raise ValueError("CorrNet has three levels: width and radius need three entries each")
        self.ndim = ndim
        self.config = dict(ndim=ndim, in_channels=in_channels, arch="corr", width=list(width), radius=list(radius),
                           convs=int(convs), cond_dim=cond_dim, soft_argmin=bool(soft_argmin),
                           out_scale=float(out_scale))
        self.out_scale = float(out_scale)
        self.use_sa = bool(soft_argmin)
        self.radius = [int(r) for r in radius]
        self.cond = nn.Sequential(nn.Linear(1, cond_dim), nn.LeakyReLU(0.2),
                                  nn.Linear(cond_dim, cond_dim), nn.LeakyReLU(0.2))
        self.levels = nn.ModuleList()
        self.heads = nn.ModuleList()
        prev = 0
        for w, r in zip(width, self.radius, strict=True):
            cin = (2 * r + 1) ** ndim + in_channels + (ndim if soft_argmin else 0) + prev + (ndim if prev else 0)
            blocks = [_Block(ndim, cin, w, 1, cond_dim)] + [_Block(ndim, w, w, 1, cond_dim) for _ in range(convs - 1)]
            self.levels.append(nn.ModuleList(blocks))
            head = _conv(ndim)(w, ndim, 3, padding=1)
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
            self.heads.append(head)
            prev = w
        # per level: sharpness of the soft-argmin and how much of it enters the field (learned)
        if self.use_sa:
            self.beta = nn.Parameter(torch.full((3,), 4.0))
            self.gate = nn.Parameter(torch.zeros(3))

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
        flow: torch.Tensor | None = None
        hidden: torch.Tensor | None = None
        for lvl, (blocks, head) in enumerate(zip(self.levels, self.heads, strict=True)):
            assert isinstance(blocks, nn.ModuleList)
            f, m = pyr_f[lvl], pyr_m[lvl]
            parts = []
            if flow is not None:
                assert hidden is not None  # set together with flow
                flow = resize_field(flow, f.shape[2:])
                hidden = F.interpolate(hidden, size=f.shape[2:], mode=mode, align_corners=False)
                m = warp(m, flow, padding_mode="border")
            cost = local_cost(f, m, self.radius[lvl])
            parts.append(cost)
            if self.use_sa:  # the window's best match, smoothed
                sa = soft_argmin(cost, self.radius[lvl], self.beta[lvl])
                sa = (F.avg_pool2d if nd == 2 else F.avg_pool3d)(F.pad(sa, [1] * (2 * nd), mode="replicate"), 3, 1)
                parts.append(sa)
            parts.append(f)
            if flow is not None:
                assert hidden is not None
                parts += [hidden, flow]
            h = torch.cat(parts, dim=1)
            for blk in blocks:
                h = blk(h, cond)
            hidden = h
            # ten units of every head are one voxel of the finest (1/2) grid: Adam moves all head
            # weights by ~lr at once, and unscaled heads took multi-voxel first steps (measured)
            delta = head(h) * (self.out_scale * 0.5 ** (len(self.levels) - 1 - lvl))
            if self.use_sa:
                delta = delta + self.gate[lvl] * sa
            flow = delta if flow is None else flow + delta
        assert flow is not None  # three levels, always
        out_shape = [math.ceil(n / 2) for n in shape]
        return flow[(slice(None), slice(None)) + tuple(slice(0, n) for n in out_shape)]
