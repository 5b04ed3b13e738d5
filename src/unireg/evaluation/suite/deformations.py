"""Known, diffeomorphic fixed->moving maps in world millimetres, exact forward and inverse.

Every map is ``T(x) = A (x + u(x))``: ``u = exp(v)`` is the scaling-and-squaring integral of a
stationary velocity ``v`` drawn on an axis-aligned *field grid* (the fixed field of view plus a margin,
where ``v`` tapers to zero), and ``A`` an optional world affine.  The true map is *defined* as the
trilinear interpolation of ``u`` (outside the field grid ``u`` is 0), composed with ``A``; so it is
known exactly everywhere.  Its inverse is solved point by point (``x + u(x) = A^{-1} y``, relaxed
fixed-point iteration started from ``exp(-v)``) to < 1e-3 mm, so the moving image rendered through the
inverse has ``T`` as its exact ground truth.

Families (``DEFORMATION_FAMILIES``): ``aligned`` (identity: do-no-harm), ``smooth`` (Gaussian-smoothed
noise, sigma 4/8/16 mm, max 4-12 mm), ``bspline`` (random cubic B-spline grid, 10-40 mm spacing),
``radial`` (local expansion or shrinkage around a structure, atrophy-like), ``affine`` (rotation up to
30 deg, translation up to 20 mm, scaling +-10 %, composed with a smooth field).
"""

from __future__ import annotations

import numpy as np
import torch

from ...spatial.grid import sample
from ...spatial.integrate import integrate_velocity
from .grids import Grid, rotation

__all__ = ["TrueMap", "make_deformation", "DEFORMATION_FAMILIES", "SMOOTH_SIGMAS_MM", "MAX_DISP_RANGE_MM"]

DEFORMATION_FAMILIES = ("aligned", "smooth", "bspline", "radial", "affine")
SMOOTH_SIGMAS_MM = (4.0, 8.0, 16.0)
# the max |u| (deformable part, inside the field of view) each family draws from
MAX_DISP_RANGE_MM = {
    "aligned": (0.0, 0.0),
    "smooth": (4.0, 12.0),
    "bspline": (3.0, 10.0),
    "radial": (4.0, 10.0),
    "affine": (3.0, 6.0),
}
_SMOOTH_MAX = {4.0: (4.0, 6.0), 8.0: (5.0, 9.0), 16.0: (6.0, 12.0)}
_CHUNK = 2_000_000


class TrueMap:
    """``T(x) = A (x + u(x))`` with ``u`` on an axis-aligned field grid (see module docstring).

    Parameters
    ----------
    origin, spacing : field grid's world origin (ndim,) and isotropic spacing (mm).
    disp_mm : ``(ndim, *F)`` float32, ``u`` in world mm (components x, y[, z]).
    inv_guess_mm : ``exp(-v)`` on a grid with the same origin and ``inv_guess_spacing``: only a starting
        point for the inverse.
    matrix : ``(ndim+1, ndim+1)`` homogeneous world affine ``A`` (identity by default).
    """

    def __init__(
        self,
        origin,
        spacing: float,
        disp_mm: torch.Tensor,
        inv_guess_mm: torch.Tensor,
        matrix=None,
        inv_guess_spacing: float | None = None,
    ):
        self.origin = np.asarray(origin, np.float64)
        self.spacing = float(spacing)
        self.inv_guess_spacing = float(inv_guess_spacing or spacing)
        self.ndim = len(self.origin)
        self.disp = disp_mm.float().contiguous()
        self.inv_guess = inv_guess_mm.float().contiguous()
        self.matrix = np.eye(self.ndim + 1) if matrix is None else np.asarray(matrix, np.float64)
        self.last_inverse_residual_mm = 0.0

    @classmethod
    def identity(cls, ndim: int) -> "TrueMap":
        z = torch.zeros((ndim,) + (2,) * ndim)
        return cls(np.zeros(ndim), 1.0, z, z.clone())

    def _field_at(self, field: torch.Tensor, points: np.ndarray, spacing: float | None = None) -> np.ndarray:
        """Trilinear ``field`` at world points ``(N, nd)`` (zero outside the field grid)."""
        nd = self.ndim
        spacing = spacing or self.spacing
        out = np.empty_like(points)
        for s in range(0, len(points), _CHUNK):
            p = points[s : s + _CHUNK]
            vox = torch.from_numpy(((p - self.origin) / spacing).T.astype(np.float32))
            coords = vox.reshape(1, nd, -1, *([1] * (nd - 1)))
            val = sample(field[None], coords, padding_mode="zeros")[0].reshape(nd, -1)
            out[s : s + _CHUNK] = val.T.double().numpy()
        return out

    def deformable(self, points: np.ndarray) -> np.ndarray:
        """``x + u(x)`` (no affine)."""
        return points + self._field_at(self.disp, points)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """The true fixed->moving map ``T`` at world points ``(N, nd)`` (mm)."""
        y = self.deformable(points)
        a = self.matrix
        return y @ a[: self.ndim, : self.ndim].T + a[: self.ndim, self.ndim]

    def inverse(self, points: np.ndarray, tol_mm: float = 5e-3, max_iter: int = 60) -> np.ndarray:
        """``T^{-1}`` (moving->fixed) at world points ``(N, nd)``; records the worst residual."""
        nd = self.ndim
        ainv = np.linalg.inv(self.matrix)
        z = points @ ainv[:nd, :nd].T + ainv[:nd, nd]
        x = z + self._field_at(self.inv_guess, z, self.inv_guess_spacing)
        active = np.arange(len(z))
        for it in range(max_iter):
            xa = x[active]
            r = xa + self._field_at(self.disp, xa) - z[active]
            err = np.linalg.norm(r, axis=1)
            keep = err > tol_mm
            active, xa, r = active[keep], xa[keep], r[keep]
            if not len(active):
                break
            if it < 10:  # relaxed fixed point: cheap and robust for most points
                x[active] = xa - 0.7 * r
            else:  # Newton with a finite-difference Jacobian for the slow (strongly compressed) rest
                jac = np.empty((len(active), nd, nd))
                for k in range(nd):
                    d = np.zeros(nd)
                    d[k] = 0.25 * self.spacing
                    jac[:, :, k] = (self._field_at(self.disp, xa + d) - self._field_at(self.disp, xa - d)) / (2 * d[k])
                jac += np.eye(nd)
                x[active] = xa - np.linalg.solve(jac, r[..., None])[..., 0]
        r = x + self._field_at(self.disp, x) - z
        self.last_inverse_residual_mm = float(np.linalg.norm(r, axis=1).max()) if len(r) else 0.0
        return x

    def displacement_on(self, grid: Grid) -> np.ndarray:
        """``T(x) - x`` on every voxel of ``grid``: ``(nd, *shape)`` float32 world mm (the true warp)."""
        p = grid.points()
        return (self.forward(p) - p).T.reshape((grid.ndim,) + tuple(grid.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
def _field_grid(fixed: Grid, spacing: float, margin: float):
    lo = fixed.corners_world().min(0) - margin
    hi = fixed.corners_world().max(0) + margin
    shape = tuple(int(np.ceil((h - lo_) / spacing)) + 1 for lo_, h in zip(lo, hi, strict=False))
    return lo, shape


def _taper(shape, spacing: float, margin: float) -> np.ndarray:
    """1 inside (further than ``margin`` from the field grid's edge), smoothly 0 at the edge."""
    w = np.ones(shape, np.float64)
    for ax, n in enumerate(shape):
        d = np.minimum(np.arange(n), n - 1 - np.arange(n)) * spacing / margin
        t = np.clip(d, 0, 1)
        t = t * t * (3 - 2 * t)
        w = w * t.reshape([-1 if i == ax else 1 for i in range(len(shape))])
    return w


def _integrate(v_mm: np.ndarray, spacing: float, steps: int = 7) -> torch.Tensor:
    v = torch.from_numpy((v_mm / spacing).astype(np.float32))[None]
    return integrate_velocity(v, steps=steps)[0] * spacing


def _scaled(
    v_unit: np.ndarray, spacing: float, target_mm: float, inside: tuple
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Scale a velocity so that max |exp(v)| over the fixed field of view (``inside`` slices) is about
    ``target_mm`` (scale found on a 2x coarser copy, cheap).  Returns ``exp(v)`` on the full grid,
    ``exp(-v)`` on the 2x coarser grid (only a starting point for the inverse) and the measured max
    |exp(v)| inside."""
    coarse = v_unit[(slice(None),) + (slice(None, None, 2),) * (v_unit.ndim - 1)]
    c_inside = tuple(slice(s.start // 2, (s.stop + 1) // 2) for s in inside)
    k = 1.0
    for _ in range(4):  # integration is not linear in the scale
        fwd = _integrate(coarse * k, 2 * spacing)
        peak = float(fwd[(slice(None),) + c_inside].norm(dim=0).max())
        k = k * target_mm / max(peak, 1e-9)
    fwd = _integrate(v_unit * k, spacing)
    inv = _integrate(-coarse * k, 2 * spacing)
    return fwd, inv, float(fwd[(slice(None),) + inside].norm(dim=0).max())


def _smooth_velocity(rng, shape, spacing, sigma_mm) -> np.ndarray:
    from scipy import ndimage

    nd = len(shape)
    return np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma_mm / spacing, mode="constant") for _ in range(nd)]
    )


def _bspline_velocity(rng, shape, spacing, ctrl_mm) -> np.ndarray:
    from scipy import ndimage

    nd = len(shape)
    n_ctrl = [int(np.ceil((n - 1) * spacing / ctrl_mm)) + 4 for n in shape]
    coords = np.meshgrid(*[np.arange(n) * spacing / ctrl_mm + 1.5 for n in shape], indexing="ij")
    return np.stack(
        [
            ndimage.map_coordinates(rng.standard_normal(n_ctrl), coords, order=3, prefilter=False, mode="nearest")
            for _ in range(nd)
        ]
    )


def _radial_velocity(shape, origin, spacing, centre, radius_mm, sign) -> np.ndarray:
    len(shape)
    axes = [origin[i] + np.arange(n) * spacing - centre[i] for i, n in enumerate(shape)]
    rel = np.meshgrid(*axes, indexing="ij")
    r2 = sum(g * g for g in rel)
    bump = np.exp(-r2 / (2 * radius_mm**2))
    return sign * np.stack([g * bump for g in rel])


def make_deformation(
    family: str,
    fixed: Grid,
    rng: np.random.Generator,
    centres: np.ndarray | None = None,
    field_spacing: float | None = None,
) -> tuple[TrueMap, dict]:
    """Draw one true map of ``family`` for the fixed grid; ``centres`` (K, nd) are candidate structure
    centres (world mm) for ``radial``.  Returns the map and a description (incl. ``max_disp_mm``)."""
    nd = fixed.ndim
    if family == "aligned":
        return TrueMap.identity(nd), {"deformation": "aligned", "max_disp_mm": 0.0}
    h = field_spacing or (2.0 if nd == 3 else 1.0)
    margin = 30.0 if nd == 3 else 20.0
    origin, shape = _field_grid(fixed, h, margin)
    m = int(round(margin / h))
    inside = tuple(slice(m, n - m) for n in shape)
    taper = _taper(shape, h, margin)
    info: dict = {"deformation": family, "field_spacing_mm": h}
    matrix = None
    if family == "smooth":
        sigma = float(SMOOTH_SIGMAS_MM[int(rng.integers(len(SMOOTH_SIGMAS_MM)))])
        target = float(rng.uniform(*_SMOOTH_MAX[sigma]))
        v = _smooth_velocity(rng, shape, h, sigma)
        info.update(sigma_mm=sigma)
    elif family == "bspline":
        ctrl = float(rng.uniform(10.0, 40.0))
        target = float(np.clip(rng.uniform(0.25, 0.35) * ctrl, *MAX_DISP_RANGE_MM["bspline"]))
        v = _bspline_velocity(rng, shape, h, ctrl)
        info.update(control_spacing_mm=round(ctrl, 2))
    elif family == "radial":
        c = fixed.centre_world() if centres is None or not len(centres) else centres[int(rng.integers(len(centres)))]
        c = np.asarray(c, np.float64)
        radius = float(rng.uniform(12.0, 25.0))
        sign = float(rng.choice([-1.0, 1.0]))
        target = float(min(rng.uniform(*MAX_DISP_RANGE_MM["radial"]), 0.4 * radius))
        target = max(target, MAX_DISP_RANGE_MM["radial"][0])
        v = _radial_velocity(shape, origin, h, c, radius, sign)
        info.update(
            centre_mm=np.round(c, 2).tolist(),
            radius_mm=round(radius, 2),
            kind="expansion" if sign > 0 else "shrinkage (atrophy-like)",
        )
    elif family == "affine":
        target = float(rng.uniform(*MAX_DISP_RANGE_MM["affine"]))
        v = _smooth_velocity(rng, shape, h, 8.0)
        ang_mag = float(rng.uniform(5.0, 30.0))
        if nd == 2:
            ang = [ang_mag * rng.choice([-1, 1])]
        else:
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            ang = list(ang_mag * axis)  # small-angle split of the rotation over the Euler angles
        t = rng.uniform(-1, 1, size=nd)
        t = t / max(float(np.linalg.norm(t)), 1e-9) * rng.uniform(5.0, 20.0)
        scale = rng.uniform(0.9, 1.1, size=nd)
        lin = rotation(nd, ang) @ np.diag(scale)
        c = fixed.centre_world()
        matrix = np.eye(nd + 1)
        matrix[:nd, :nd] = lin
        matrix[:nd, nd] = c + t - lin @ c
        info.update(
            angles_deg=np.round(ang, 2).tolist(),
            translation_mm=np.round(t, 2).tolist(),
            scale=np.round(scale, 4).tolist(),
        )
    else:
        raise ValueError(f"unknown deformation family {family!r}; choose from {DEFORMATION_FAMILIES}")
    fwd, inv, peak = _scaled(v * taper, h, target, inside)
    info["max_disp_mm"] = round(peak, 3)
    return TrueMap(origin, h, fwd, inv, matrix, inv_guess_spacing=2 * h), info
