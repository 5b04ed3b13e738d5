"""A dimension-generic UNet predicting a stationary velocity field, conditioned on the
regularisation weight (FiLM), so the smoothness/accuracy trade-off can be set at inference
(in the spirit of SynthMorph's hypernetwork, with a cheaper per-layer affine modulation)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UNet", "encode_smoothness"]

# The regularisation weight lambda is fed to the network as a normalised log value.
LOG_LAMBDA_MIN = math.log(0.1)
LOG_LAMBDA_MAX = math.log(10.0)


def encode_smoothness(lam: torch.Tensor) -> torch.Tensor:
    """Map lambda in [0.1, 10] (log-uniform during training) to [-1, 1]."""
    t = (torch.log(lam) - LOG_LAMBDA_MIN) / (LOG_LAMBDA_MAX - LOG_LAMBDA_MIN)
    return 2.0 * t - 1.0


def _conv(nd: int):
    return nn.Conv2d if nd == 2 else nn.Conv3d


class _Block(nn.Module):
    def __init__(self, nd: int, cin: int, cout: int, stride: int, cond_dim: int):
        super().__init__()
        self.conv = _conv(nd)(cin, cout, 3, stride=stride, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gamma, beta = self.film(cond).chunk(2, dim=1)
        shape = (y.shape[0], y.shape[1]) + (1,) * (y.dim() - 2)
        y = y * (1.0 + gamma.view(shape)) + beta.view(shape)
        return F.leaky_relu(y, 0.2)


class UNet(nn.Module):
    """UNet from two feature maps to a velocity field in voxel units.

    Parameters
    ----------
    ndim : 2 or 3.
    in_channels : channels of *one* feature map (the network sees fixed and moving concatenated).
    enc : channels per encoder level; each level halves the resolution.
    dec : channels per decoder level (coarse to fine).  With ``len(dec) < len(enc)`` the output
        stays at a coarser level: the velocity is predicted at ``1 / 2**(len(enc) - len(dec))`` of
        the input resolution (VoxelMorph's ``int_downsize``).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32),
        cond_dim: int = 32,
    ):
        super().__init__()
        self.ndim = ndim
        self.config = dict(ndim=ndim, in_channels=in_channels, enc=list(enc), dec=list(dec), cond_dim=cond_dim)
        if len(dec) > len(enc):
            raise ValueError("decoder cannot have more levels than the encoder")
        self.cond = nn.Sequential(nn.Linear(1, cond_dim), nn.LeakyReLU(0.2), nn.Linear(cond_dim, cond_dim), nn.LeakyReLU(0.2))
        self.stem = _Block(ndim, 2 * in_channels, enc[0], 1, cond_dim)
        self.down = nn.ModuleList()
        c = enc[0]
        for ch in list(enc[1:]) + [enc[-1]]:
            self.down.append(_Block(ndim, c, ch, 2, cond_dim))
            c = ch
        self.up = nn.ModuleList()
        skips = list(enc)[::-1]  # skip channels from coarse to fine
        for i, ch in enumerate(dec):
            self.up.append(_Block(ndim, c + skips[i], ch, 1, cond_dim))
            c = ch
        self.head = _conv(ndim)(c, ndim, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)
        self.levels = len(enc)
        self.out_level = len(enc) - len(dec)

    @property
    def multiple(self) -> int:
        return 2 ** self.levels

    def forward(self, fixed_feat: torch.Tensor, moving_feat: torch.Tensor, smoothness: torch.Tensor) -> torch.Tensor:
        """Features ``(B, C, *S)`` each and ``smoothness`` ``(B,)`` -> velocity ``(B, ndim, *S_out)``.

        ``S`` need not be a multiple of anything: the input is padded internally and the output
        cropped to ``ceil(S / 2**out_level)``.
        """
        shape = fixed_feat.shape[2:]
        m = self.multiple
        pad = []
        for n in reversed(shape):
            pad += [0, (-n) % m]
        x = torch.cat([fixed_feat, moving_feat], dim=1)
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        cond = self.cond(encode_smoothness(smoothness.to(x.dtype)).view(-1, 1))
        skips = []
        h = self.stem(x, cond)
        for blk in self.down:
            skips.append(h)
            h = blk(h, cond)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        for i, blk in enumerate(self.up):
            skip = skips[-1 - i]
            h = F.interpolate(h, size=skip.shape[2:], mode=mode, align_corners=False)
            h = blk(torch.cat([h, skip], dim=1), cond)
        v = self.head(h)
        f = 2 ** self.out_level
        out_shape = [math.ceil(n / f) for n in shape]
        return v[(slice(None), slice(None)) + tuple(slice(0, n) for n in out_shape)]
