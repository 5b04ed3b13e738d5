"""On-the-fly training pairs from one dataset (MNI ICBM152 T1): random smooth diffeomorphisms,
affine jitter, intensity mapping, bias field and noise.  Every pair is a pure function of its seed."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.mni import load_mni
from ..data.synth import add_noise, bias_field, coarse_shape, random_velocity, remap_contrast
from ..spatial.grid import identity_coords, resize_field, sample
from ..spatial.integrate import integrate_velocity

__all__ = ["PairSynthesizer", "CONTROL_MM"]

# spacing (mm) of the random velocity's control points
CONTROL_MM = 32.0


def _rotation(nd: int, angles_rad) -> torch.Tensor:
    r = torch.eye(nd, dtype=torch.float64)
    axes = [(0, 1)] if nd == 2 else [(0, 1), (0, 2), (1, 2)]
    for (i, j), a in zip(axes, angles_rad):
        m = torch.eye(nd, dtype=torch.float64)
        c, s = math.cos(a), math.sin(a)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = r @ m
    return r


class PairSynthesizer:
    """Draws ``(fixed, moving, fixed_labels, moving_labels)`` crops on the MNI working grid.

    Images are ``(1, *crop)`` in [0, ~1]; labels are soft maps ``(3, *crop)`` (background, GM, WM).
    For 2-D, random axial/coronal/sagittal slices of the template are used.
    """

    def __init__(self, ndim: int, spacing: float, crop, max_disp_mm: float, contrasts, bias: float, noise: float,
                 rot_deg: float, scale: float, trans_mm: float):
        self.ndim = ndim
        self.spacing = spacing
        mni = load_mni(spacing)
        t1 = torch.from_numpy(mni["t1"].data[0])
        gm, wm = torch.from_numpy(mni["gm"]), torch.from_numpy(mni["wm"])
        bg = (1.0 - gm - wm).clamp_min(0)
        self.volume = torch.stack([t1, bg, gm, wm])  # (4, *S): image + soft labels
        self.crop = [int(c) for c in crop]
        self.max_disp_vox = max_disp_mm / spacing
        self.contrasts = list(contrasts)
        self.bias, self.noise = bias, noise
        self.rot, self.scale, self.trans_vox = math.radians(rot_deg), scale, trans_mm / spacing

    def _slice_source(self, g: torch.Generator) -> torch.Tensor:
        if self.ndim == 3:
            return self.volume
        axis = int(torch.randint(0, 3, (1,), generator=g))
        n = self.volume.shape[1 + axis]
        idx = int(torch.randint(int(0.3 * n), int(0.7 * n), (1,), generator=g))
        return self.volume.select(1 + axis, idx)

    def _coords(self, src_shape, g: torch.Generator, start) -> torch.Tensor:
        """Voxel coordinates into the source for each crop voxel: jittered affine + smooth warp."""
        nd = self.ndim
        crop = self.crop
        centre = torch.tensor([(n - 1) / 2 for n in src_shape], dtype=torch.float64)
        ang = (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * self.rot
        sc = 1 + (torch.rand(nd, generator=g, dtype=torch.float64) * 2 - 1) * self.scale
        tr = (torch.rand(nd, generator=g, dtype=torch.float64) * 2 - 1) * self.trans_vox
        lin = _rotation(nd, ang.tolist()) @ torch.diag(sc)
        cshape = coarse_shape(crop, 4)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        amp = float(torch.rand(1, generator=g)) * self.max_disp_vox
        factor = (crop[0] - 1) / (cshape[0] - 1)
        # control points every ~CONTROL_MM whatever the crop and spacing: the deformation's
        # smoothness is a physical property (too few mm per control point makes near-folding fields)
        control = max(3, int(round(max(crop) * self.spacing / CONTROL_MM)))
        v = random_velocity(cshape, max(amp, 1e-3) / factor, seed=seed, control=control)
        disp = resize_field(integrate_velocity(v), crop)[0].double()
        p = identity_coords(crop, dtype=torch.float64) + torch.tensor(start, dtype=torch.float64).view(nd, *([1] * nd))
        q = p + disp
        q = torch.einsum("ij,j...->i...", lin, q - centre.view(nd, *([1] * nd))) + (centre + tr).view(nd, *([1] * nd))
        return q.float()

    def _crop_start(self, src_shape, g: torch.Generator) -> list[int]:
        out = []
        for n, c in zip(src_shape, self.crop):
            slack = n - c
            if slack <= 0:
                out.append(slack // 2)
            else:  # centre-biased: brains sit in the middle of the template
                out.append(int(slack / 2 + (float(torch.rand(1, generator=g)) - 0.5) * slack * 0.8))
        return out

    def _view(self, src: torch.Tensor, g: torch.Generator, start, contrasts=None) -> tuple[torch.Tensor, torch.Tensor]:
        coords = self._coords(src.shape[1:], g, start)
        out = sample(src[None], coords[None])[0]
        img, lab = out[:1], out[1:]
        contrasts = contrasts or self.contrasts
        contrast = contrasts[int(torch.randint(0, len(contrasts), (1,), generator=g))]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        img = remap_contrast(img, contrast) * bias_field(self.crop, self.bias, seed)[None]
        img = add_noise(img, self.noise * float(torch.rand(1, generator=g)), seed).clamp_min(0)
        # the pipeline normalises intensities robustly; do the same here
        hi = torch.quantile(img.flatten()[:: max(1, img.numel() // 200_000)], 0.995).clamp_min(1e-6)
        return (img / hi).clamp(0, 1), lab

    def pair(self, seed: int, moving_contrast: str | None = None) -> dict:
        """One pair; ``moving_contrast`` overrides the moving image's contrast (evaluation off the
        training domain), the fixed one keeps the training contrasts."""
        g = torch.Generator().manual_seed(int(seed))
        src = self._slice_source(g)
        start = self._crop_start(src.shape[1:], g)
        fixed, fixed_lab = self._view(src, g, start)
        moving, moving_lab = self._view(src, g, start, [moving_contrast] if moving_contrast else None)
        return {"fixed": fixed, "moving": moving, "fixed_labels": fixed_lab, "moving_labels": moving_lab}

    def batch(self, seeds, moving_contrast: str | None = None) -> dict:
        items = [self.pair(s, moving_contrast) for s in seeds]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
