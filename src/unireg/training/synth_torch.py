"""Batched training pairs made in torch on the training device (CPU or GPU).

One dataset: the MNI ICBM152 T1 (with its GM/WM maps), as the paper insists.  A pair is

* a *base view*: a crop of the template under a shared "subject" affine (pose and size variety;
  both images of the pair share it, so it is never part of the target);
* fixed  = base view;
* moving = base view pulled through a *relative* transform ``T``: a multi-scale stationary
  velocity field (smooth noise on control grids spaced 48, 32, 16 and 8 mm, trilinear, integrated
  by scaling and squaring) composed with a small affine (the residual an affine pre-alignment
  leaves).  The network has to find exactly ``T``: a bounded, smooth, diffeomorphic target.

Intensities per image: a named contrast (training: T1), random gamma, a smooth multiplicative bias
field, Gaussian noise, robust normalisation (optionally inversion).  Never drawn here (they are the
held-out families of the evaluation suite): random B-spline displacement grids, radial/local
expansion fields, random non-monotonic piecewise-linear intensity maps, CT-like maps.

All heavy work is batched: one sampling pass over the template for the ``2B`` images of a batch, one
scaling-and-squaring for the ``B`` velocities.  On the CPU both sample through ATen's vectorised 2-D
kernel (:mod:`unireg.spatial.mosaic`), the smooth grids are upsampled by separable matrix products
(:func:`unireg.spatial.grid.linear_resize`) and the intensity passes run a few views at a time;
on a GPU ``grid_sample`` as it is.  Small random parameters are drawn per pair
from a CPU generator seeded by the pair's seed; the per-voxel noise comes from a device generator
seeded by the batch's seeds, so a batch is a pure function of its seeds on a given device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mni import load_mni
from ..data.synth import CONTRASTS
from ..spatial.grid import identity_coords, linear_resize, sample
from ..spatial.integrate import integrate_velocity
from ..spatial.mosaic import SliceMosaic, exp_velocity_values

__all__ = ["TorchPairSynthesizer", "SVF_LEVELS_MM"]

# The contrast maps training may draw (unireg.data.synth.CONTRASTS names); held-out ones are absent.
TRAINING_CONTRASTS = ("t1", "t2", "pd", "flair")

# voxels per pass of the intensity augmentation (a few 48^3 views: cache-sized passes)
CHUNK_VOXELS = 1 << 19

# control-point spacings (mm) of the multi-scale smooth velocity noise
SVF_LEVELS_MM = (48.0, 32.0, 16.0, 8.0)


def _rotation(nd: int, angles) -> torch.Tensor:
    r = torch.eye(nd, dtype=torch.float64)
    axes = [(0, 1)] if nd == 2 else [(0, 1), (0, 2), (1, 2)]
    for (i, j), a in zip(axes, angles, strict=False):  # 2-D: one plane, three angles drawn
        m = torch.eye(nd, dtype=torch.float64)
        c, s = math.cos(a), math.sin(a)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = r @ m
    return r


def _piecewise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A named contrast of :data:`unireg.data.synth.CONTRASTS` on any device."""
    xs, ys = CONTRASTS[kind]
    xs_t = torch.tensor(xs, dtype=x.dtype, device=x.device)
    ys_t = torch.tensor(ys, dtype=x.dtype, device=x.device)
    x = x.clamp(0, 1)
    idx = torch.clamp(torch.searchsorted(xs_t, x.contiguous(), right=True) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs_t[idx], xs_t[idx + 1], ys_t[idx], ys_t[idx + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class TorchPairSynthesizer:
    """Draws batches ``{"fixed", "moving", "fixed_labels", "moving_labels"}`` on ``device``.

    Images are ``(B, 1, *crop)`` in [0, 1]; labels ``(B, 3, *crop)`` soft maps (background, GM, WM).
    2-D crops are planes through the 3-D template (random axis, middle 40 %), sampled in 3-D.

    Parameters (lengths in mm, angles in degrees)
    ----------
    max_disp_mm : peak of the relative non-linear displacement (uniform in [0, max] per pair).
    rel_rot_deg, rel_scale, rel_shear, rel_trans_mm : the relative affine (residual misalignment).
    subj_rot_deg, subj_scale : the shared pose/size variation.
    gamma, bias, noise, invert : intensity augmentation (log-gamma std, bias strength, noise std,
        probability of inverting the image).
    label_stride : 1 gives labels on the crop grid; 2 gives them on the half-resolution grid
        (``ceil(n / 2)`` points spanning the same extent, as ``resize_field`` maps them): the label
        pass then costs an eighth, which is what a Dice training term needs.
    """

    def __init__(self, ndim: int, spacing: float, crop, contrasts=("t1",), device="cpu", max_disp_mm: float = 8.0,
                 rel_rot_deg: float = 2.0, rel_scale: float = 0.02, rel_shear: float = 0.02, rel_trans_mm: float = 2.0,
                 subj_rot_deg: float = 8.0, subj_scale: float = 0.06,
                 gamma: float = 0.25, bias: float = 0.2, noise: float = 0.02, invert: float = 0.0,
                 int_steps: int = 5, label_stride: int = 1):
        self.ndim = int(ndim)
        self.spacing = float(spacing)
        self.crop = [int(c) for c in crop]
        if len(self.crop) != self.ndim:
            raise ValueError(f"crop {self.crop} does not have {self.ndim} sides")
        self.device = torch.device(device)
        self.contrasts = list(contrasts)
        # an allow-list: held-out evaluation contrasts (the CT-like map) can never be trained on
        unknown = sorted(set(self.contrasts) - set(TRAINING_CONTRASTS))
        if unknown:
            allowed = ", ".join(TRAINING_CONTRASTS)
            raise ValueError(f"contrasts {unknown} are not training contrasts (allowed: {allowed})")
        self.max_disp_mm = max_disp_mm
        self.rel = (math.radians(rel_rot_deg), rel_scale, rel_shear, rel_trans_mm / self.spacing)
        self.subj = (math.radians(subj_rot_deg), subj_scale)
        self.gamma, self.bias, self.noise, self.invert = gamma, bias, noise, invert
        self.int_steps = int_steps
        self.label_stride = int(label_stride)
        mni = load_mni(self.spacing)
        t1 = torch.from_numpy(mni["t1"].data[0])
        gm, wm = torch.from_numpy(mni["gm"]), torch.from_numpy(mni["wm"])
        # background is 1 - GM - WM after sampling: one channel less in the costly template pass
        self.image_vol = t1[None, None].float().contiguous().to(self.device)  # (1, 1, *S3)
        self.label_vol = torch.stack([gm, wm])[None].float().contiguous().to(self.device)  # (1, 2, *S3)
        self.src_shape = list(self.image_vol.shape[2:])
        # laid out once for ATen's vectorised 2-D sampler (~2x faster than its 3-D one on the CPU; on a
        # GPU grid_sample as it is): the same pairs to ~1e-4 either way (tests/training/test_synth_torch.py)
        self.use_mosaic = self.device.type == "cpu"
        self.image_mosaic = SliceMosaic(self.image_vol) if self.use_mosaic else None
        self.label_mosaic = SliceMosaic(self.label_vol) if self.use_mosaic else None
        # velocities live at half the crop resolution (as the network's do)
        self.vshape = [max(2, math.ceil(n / 2)) for n in self.crop]
        extent_mm = [(n - 1) * self.spacing for n in self.crop]
        self.levels = [(s, [max(2, int(math.ceil(e / s)) + 1) for e in extent_mm]) for s in SVF_LEVELS_MM]
        self.centre = torch.tensor([(n - 1) / 2 for n in self.crop], dtype=torch.float64)

    # --- per-pair parameters (CPU, pure functions of the seed) ---------------------------------
    def _affine(self, g, rot, scale, shear) -> torch.Tensor:
        nd = self.ndim
        u = lambda n: (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)  # noqa: E731
        lin = _rotation(nd, (u(3) * rot).tolist()) @ torch.diag(1 + u(nd) * scale)
        sh = torch.eye(nd, dtype=torch.float64)
        iu = torch.triu_indices(nd, nd, 1)
        sh[iu[0], iu[1]] = u(iu.shape[1]) * shear
        return lin @ sh

    def _params(self, seed: int, moving_contrast: str | None) -> dict:
        g = torch.Generator().manual_seed(int(seed))
        nd = self.ndim
        p: dict = {}
        # where the crop sits in the 3-D template (and, in 2-D, which plane)
        if nd == 3:
            axes = [0, 1, 2]
            start3 = [0.0, 0.0, 0.0]
        else:
            axis = int(torch.randint(0, 3, (1,), generator=g))
            axes = [a for a in range(3) if a != axis]
            n = self.src_shape[axis]
            start3 = [0.0, 0.0, 0.0]
            start3[axis] = float(torch.randint(int(0.3 * n), int(0.7 * n), (1,), generator=g))
        for a, c in zip(axes, self.crop, strict=True):
            slack = self.src_shape[a] - c
            jitter = (float(torch.rand(1, generator=g)) - 0.5) * 0.8 * max(slack, 0)
            start3[a] = slack / 2 + jitter
        emb = torch.zeros(3, nd, dtype=torch.float64)
        for j, a in enumerate(axes):
            emb[a, j] = 1.0
        p["start3"], p["emb"] = torch.tensor(start3, dtype=torch.float64), emb
        # shared subject transform
        rot, sc = self.subj
        p["subj_lin"] = self._affine(g, rot, sc, 0.0)
        # relative transform: multi-scale SVF + small affine
        rr, rs, rsh, rt = self.rel
        p["rel_lin"] = self._affine(g, rr, rs, rsh)
        p["rel_t"] = (torch.rand(nd, generator=g, dtype=torch.float64) * 2 - 1) * rt
        total = float(torch.rand(1, generator=g)) * self.max_disp_mm / self.spacing
        w = -torch.log(torch.rand(len(self.levels), generator=g))  # Dirichlet(1, ..., 1) weights
        w = w / w.sum()
        amps = []
        for (s_mm, _), wk in zip(self.levels, w.tolist(), strict=True):
            # a level spaced s mm never displaces more than 0.35 s: no near-folding fields
            amps.append(min(total * wk, 0.35 * s_mm / self.spacing))
        p["rel_amps"] = amps
        p["rel_ctrl"] = [torch.randn((nd,) + tuple(shape), generator=g) for _, shape in self.levels]
        # intensities, one set per image (fixed, moving)
        for key, forced in (("f", None), ("m", moving_contrast)):
            cs = [forced] if forced else self.contrasts
            p[key + "_contrast"] = cs[int(torch.randint(0, len(cs), (1,), generator=g))]
            p[key + "_gamma"] = math.exp(float(torch.randn(1, generator=g)) * self.gamma)
            p[key + "_bias"] = torch.randn((nd, 4), generator=g) * (self.bias / math.sqrt(nd))
            p[key + "_noise"] = float(torch.rand(1, generator=g)) * self.noise
            p[key + "_invert"] = bool(float(torch.rand(1, generator=g)) < self.invert)
        return p

    # --- batched geometry ------------------------------------------------------------------------
    def _smooth(self, ctrl: torch.Tensor, shape) -> torch.Tensor:
        return linear_resize(ctrl, shape)  # (bi/tri)linear, align_corners=True

    def _relative_velocity(self, ps: list[dict]) -> torch.Tensor:
        """``(B, nd, *vshape)`` velocity in voxels of the velocity grid."""
        dev = self.device
        factor = torch.tensor([(nv - 1) / (nc - 1) for nv, nc in zip(self.vshape, self.crop, strict=True)], device=dev)
        v: torch.Tensor | int = 0
        for k in range(len(self.levels)):
            ctrl = torch.stack([p["rel_ctrl"][k] for p in ps]).to(dev)
            # linear interpolation never exceeds the control points' peak
            peak = ctrl.norm(dim=1).flatten(1).amax(1).clamp_min(1e-6)
            amp = torch.tensor([p["rel_amps"][k] for p in ps], device=dev, dtype=ctrl.dtype)
            v = v + self._smooth(ctrl * (amp / peak).view(-1, *([1] * (ctrl.dim() - 1))), self.vshape)
        return v * factor.view(1, -1, *([1] * self.ndim))  # crop voxels -> velocity-grid voxels

    def _base_map(self, ps: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The crop -> template voxel map of each pair, ``q = m (p - c) + e c + start``: ``m``
        ``(B, 3, nd)``, the embedding ``e`` after the subject affine about the crop centre ``c``;
        ``e c`` and ``start`` ``(B, 3)``."""
        dev = self.device
        c = self.centre.to(dev).float()
        lin = torch.stack([p["subj_lin"] for p in ps]).to(dev).float()
        emb = torch.stack([p["emb"] for p in ps]).to(dev).float()
        start = torch.stack([p["start3"] for p in ps]).to(dev).float()
        return emb @ lin, emb @ c, start

    def _base_coords(self, ps: list[dict], pts: torch.Tensor) -> torch.Tensor:
        """3-D template voxel coordinates ``(B, 3, *crop)`` of crop points ``pts`` ``(B, nd, *crop)``."""
        nd = self.ndim
        m, emb_c, start = self._base_map(ps)
        c = self.centre.to(self.device).view(1, nd, *([1] * nd)).float()
        ones = (-1, 3, *([1] * nd))
        return torch.einsum("bij,bj...->bi...", m, pts - c) + emb_c.view(ones) + start.view(ones)

    def _fixed_coords(self, ps: list[dict]) -> torch.Tensor:
        """:meth:`_base_coords` of the crop grid itself: affine, so a sum of one ramp per axis
        (one full-size addition instead of a matrix product over every point)."""
        nd = self.ndim
        m, emb_c, start = self._base_map(ps)
        out = (emb_c + start - m @ self.centre.to(self.device).float()).view(len(ps), 3, *([1] * nd))
        for j, n in enumerate(self.crop):
            shape = [len(ps), 3] + [1] * nd
            shape[2 + j] = n
            out = out + (m[:, :, j : j + 1] * torch.arange(n, device=self.device, dtype=m.dtype)).view(shape)
        return out

    def _moving_points(self, ps: list[dict], ident_v: torch.Tensor) -> torch.Tensor:
        """Crop points ``T(p)`` ``(B, nd, *vshape)`` the moving image shows at the velocity-grid points
        ``p``: the small affine after ``exp(-v)``.  (Everything is linear in these points, so the crop
        resolution is reached by interpolating the final coordinates once.)"""
        dev, nd = self.device, self.ndim
        v = self._relative_velocity(ps)
        scale = torch.tensor([(nc - 1) / (nv - 1) for nv, nc in zip(self.vshape, self.crop, strict=True)], device=dev)
        # on the CPU in 3-D each squaring goes through ATen's vectorised 2-D sampler (spatial.mosaic)
        exp = exp_velocity_values if nd == 3 and self.use_mosaic and self.int_steps > 0 else integrate_velocity
        disp = exp(-v, self.int_steps) * scale.view(1, nd, *([1] * nd))  # crop voxels
        c = self.centre.to(dev).view(1, nd, *([1] * nd)).float()
        lin = torch.stack([p["rel_lin"] for p in ps]).to(dev).float()
        t = torch.stack([p["rel_t"] for p in ps]).to(dev).float().view(-1, nd, *([1] * nd))
        return torch.einsum("bij,bj...->bi...", lin, ident_v + disp - c) + c + t

    # --- intensities -----------------------------------------------------------------------------
    def _intensity(self, img: torch.Tensor, ps: list[dict], keys: list[str],
                   noise_gen: torch.Generator) -> torch.Tensor:
        """``img`` ``(N, 1, *crop)``: view ``i`` uses the parameters ``ps[i][keys[i] + ...]``."""
        named = [p[k + "_contrast"] for p, k in zip(ps, keys, strict=True)]
        x = img.clamp(0, 1)  # a fresh tensor: everything below is in place
        if any(c != "t1" for c in named):
            x = torch.stack([_piecewise(x[i], c) if c != "t1" else x[i] for i, c in enumerate(named)])
        n = x.shape[0]
        bshape = (n, 1) + (1,) * self.ndim
        gam = torch.tensor([p[k + "_gamma"] for p, k in zip(ps, keys, strict=True)], device=x.device).view(bshape)
        sig = torch.tensor([p[k + "_noise"] for p, k in zip(ps, keys, strict=True)], device=x.device).view(bshape)
        # separable smooth bias exp(b_0(x_0)) exp(b_1(x_1)) [exp(b_2(x_2))]: one broadcast product per axis
        bias = torch.stack([p[k + "_bias"] for p, k in zip(ps, keys, strict=True)]).to(x.device)  # (n, nd, 4)
        curves = []
        for ax, m in enumerate(self.crop):
            curve = F.interpolate(bias[:, ax : ax + 1], size=m, mode="linear", align_corners=True)  # (n, 1, m)
            shape = [n, 1] + [1] * self.ndim
            shape[2 + ax] = m
            curves.append(torch.exp(curve).view(shape))
        # a few views at a time, in place: the passes below then stay in the cache
        step = max(1, CHUNK_VOXELS // x[0].numel())
        for i in range(0, n, step):
            xi, sl = x[i : i + step], slice(i, i + step)
            xi.pow_(gam[sl])
            for curve in curves:
                xi.mul_(curve[sl])
            xi.add_(torch.randn(xi.shape, generator=noise_gen, device=x.device).mul_(sig[sl])).clamp_min_(0)
            # robust normalisation as the pipeline does it (99.5th percentile of a regular subsample)
            flat = xi.flatten(1)
            sub = flat[:, :: max(1, flat.shape[1] // 16_384)]
            k = sub.shape[1] - max(1, int(round(0.995 * sub.shape[1]))) + 1  # the k-th largest, by a partial sort
            hi = torch.topk(sub, k, dim=1).values[:, -1].clamp_min(1e-6)
            xi.div_(hi.view((-1,) + bshape[1:])).clamp_(0, 1)
        inv = [p[k + "_invert"] for p, k in zip(ps, keys, strict=True)]
        if any(inv):
            x = torch.where(torch.tensor(inv, device=x.device).view(bshape), 1.0 - x, x)
        return x

    def _pull(self, vol: torch.Tensor, mosaic: SliceMosaic | None, qs: list[torch.Tensor]) -> torch.Tensor:
        """``vol`` at template voxels ``qs`` (each ``(N_i, 3, *out)``), concatenated along the batch:
        through the 2-D mosaic on the CPU (written in place, no concatenation), ATen's 3-D sampler
        elsewhere (on a GPU it is not the bottleneck)."""
        if mosaic is None or not self.use_mosaic:
            q = torch.cat(qs)
            return sample(vol.expand(q.shape[0], -1, *self.src_shape), q)
        n = sum(q.shape[0] for q in qs)
        out = torch.empty((n, vol.shape[1]) + tuple(qs[0].shape[2:]), dtype=vol.dtype, device=vol.device)
        i = 0
        for q in qs:
            mosaic.sample(q, out=out[i : i + q.shape[0]])
            i += q.shape[0]
        return out

    @torch.no_grad()
    def batch(self, seeds, moving_contrast: str | None = None) -> dict:
        """The pairs of ``seeds`` (one per pair), on :attr:`device`."""
        seeds = [int(s) for s in seeds]
        ps = [self._params(s, moving_contrast) for s in seeds]
        B, nd = len(ps), self.ndim
        # coordinates on the velocity grid (the same extent as the crop), in crop voxels
        scale = torch.tensor([(nc - 1) / (nv - 1) for nv, nc in zip(self.vshape, self.crop, strict=True)],
                             device=self.device)
        ident_v = (identity_coords(self.vshape, self.device) * scale.view(nd, *([1] * nd))).unsqueeze(0)
        pts = torch.cat([ident_v.expand(B, *([-1] * (nd + 1))), self._moving_points(ps, ident_v)])
        q_v = self._base_coords(ps + ps, pts)  # (2B, 3, *vshape) template voxels
        sq = (lambda t: t.unsqueeze(2)) if nd == 2 else (lambda t: t)  # 2-D planes are sampled in 3-D
        uq = (lambda t: t.squeeze(2)) if nd == 2 else (lambda t: t)
        # fixed views are affine in the crop points: exact at full resolution without interpolation
        q = [sq(self._fixed_coords(ps)), sq(self._smooth(q_v[B:], self.crop))]
        img = uq(self._pull(self.image_vol, self.image_mosaic, q))
        if self.label_stride == 1:
            q_l = q
        else:  # stride 2 is the velocity grid itself
            grid_l = [max(2, math.ceil(n / self.label_stride)) for n in self.crop]
            q_l = [sq(q_v if self.label_stride == 2 else self._smooth(q_v, grid_l))]
        labs = uq(self._pull(self.label_vol, self.label_mosaic, q_l))
        gen = torch.Generator(device=self.device).manual_seed(int(np.random.SeedSequence(seeds).generate_state(1)[0]))
        img = self._intensity(img, ps + ps, ["f"] * B + ["m"] * B, gen)
        lab = torch.cat([(1.0 - labs[:, :1] - labs[:, 1:2]).clamp_min(0), labs], dim=1)
        return {"fixed": img[:B], "moving": img[B:], "fixed_labels": lab[:B], "moving_labels": lab[B:]}
