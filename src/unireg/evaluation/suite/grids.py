"""Voxel grids as scanners write them: native, anisotropic, oblique and cropped/shifted fields of view.

A grid is ``(shape, affine)``: ``affine`` is the 4x4 voxel-to-world matrix (RAS mm, nibabel's
convention).  2-D grids live in the world x-y plane; their affine is still 4x4 (``affine_nd`` takes
the 3x3 part).  World points are handled as float64 arrays ``(N, ndim)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...spatial.world import affine_nd

__all__ = ["Grid", "voxel_to_world", "world_to_voxel", "rotation", "moving_grid", "GRID_FAMILIES"]

GRID_FAMILIES = ("native", "aniso", "oblique", "crop")


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, ...]
    affine: np.ndarray  # 4x4

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(affine_nd(self.affine, self.ndim)[: self.ndim, : self.ndim], axis=0)

    def points(self, index_rows: slice | None = None) -> np.ndarray:
        """World coordinates of every voxel, ``(N, ndim)`` in C order (rows of the first axis if given)."""
        axes = [np.arange(n, dtype=np.float64) for n in self.shape]
        if index_rows is not None:
            axes[0] = axes[0][index_rows]
        vox = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.ndim)
        return voxel_to_world(vox, self.affine)

    def corners_world(self) -> np.ndarray:
        c = np.stack(np.meshgrid(*[[0.0, n - 1.0] for n in self.shape], indexing="ij"), -1).reshape(-1, self.ndim)
        return voxel_to_world(c, self.affine)

    def centre_world(self) -> np.ndarray:
        return voxel_to_world((np.array(self.shape, np.float64) - 1) / 2, self.affine)


def voxel_to_world(vox: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    nd = vox.shape[-1]
    a = affine_nd(affine4, nd)
    return vox @ a[:nd, :nd].T + a[:nd, nd]


def world_to_voxel(world: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    nd = world.shape[-1]
    inv = np.linalg.inv(affine_nd(affine4, nd))
    return world @ inv[:nd, :nd].T + inv[:nd, nd]


def rotation(ndim: int, angles_deg) -> np.ndarray:
    """Rotation matrix: 2-D from one angle; 3-D from (x, y, z) Euler angles applied z @ y @ x."""
    a = np.deg2rad(np.atleast_1d(np.asarray(angles_deg, np.float64)))
    if ndim == 2:
        c, s = np.cos(a[0]), np.sin(a[0])
        return np.array([[c, -s], [s, c]])
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _grid_from(
    centre: np.ndarray, extent_mm: np.ndarray, spacing: np.ndarray, rot: np.ndarray, z_offset: float
) -> Grid:
    nd = len(centre)
    shape = tuple(int(max(8, np.ceil(e / s))) + 1 for e, s in zip(extent_mm, spacing, strict=False))
    lin = rot @ np.diag(spacing)
    origin = centre - lin @ ((np.array(shape, np.float64) - 1) / 2)
    aff = np.eye(4)
    aff[:nd, :nd] = lin
    aff[:nd, 3] = origin
    if nd == 2:
        aff[2, 3] = z_offset
    return Grid(shape, aff)


def moving_grid(
    fixed: Grid, family: str, rng: np.random.Generator, centre: np.ndarray | None = None
) -> tuple[Grid, dict]:
    """The moving image's grid for a grid family, around world ``centre`` (default: the fixed centre).

    ``native``: the fixed grid itself.  ``aniso``: thick slices along the last axis (1x1x3 or 2x2x3 mm;
    2-D 1x3 or 2x3).  ``oblique``: 1 mm voxels, direction matrix rotated 10-25 deg.  ``crop``: 1 mm,
    field of view cut by 10-25 % along two random axes and shifted up to 10 mm.
    Returns the grid and a description.
    """
    nd = fixed.ndim
    c = fixed.centre_world() if centre is None else np.asarray(centre, np.float64)
    extent = (np.array(fixed.shape) - 1) * fixed.spacing
    z = float(fixed.affine[2, 3]) if nd == 2 else 0.0
    if family == "native" and centre is None:
        return fixed, {"grid": "native", "spacing_mm": fixed.spacing.round(3).tolist()}
    if family == "native":
        return _grid_from(c, extent, fixed.spacing, np.eye(nd), z), {
            "grid": "native",
            "spacing_mm": fixed.spacing.tolist(),
        }
    if family == "aniso":
        sp = np.ones(nd) * (1.0 if rng.random() < 0.5 else 2.0)
        sp[-1] = 3.0
        return _grid_from(c, extent, sp, np.eye(nd), z), {"grid": "aniso", "spacing_mm": sp.tolist()}
    if family == "oblique":
        mag = rng.uniform(10, 25) * rng.choice([-1, 1])
        if nd == 2:
            ang = [mag]
        else:
            axis = rng.normal(size=3)
            ang = list(mag * np.abs(axis) / np.abs(axis).sum() * np.sign(axis))
        rot = rotation(nd, ang)
        return _grid_from(c, extent * 1.05, np.ones(nd), rot, z), {
            "grid": "oblique",
            "angles_deg": np.round(ang, 2).tolist(),
            "spacing_mm": [1.0] * nd,
        }
    if family == "crop":
        ext = extent.copy()
        axes = rng.choice(nd, size=min(2, nd), replace=False)
        frac = rng.uniform(0.10, 0.25, size=len(axes))
        ext[axes] = ext[axes] * (1 - frac)
        shift = rng.uniform(-10, 10, size=nd)
        return _grid_from(c + shift, ext, np.ones(nd), np.eye(nd), z), {
            "grid": "crop",
            "cut_axes": axes.tolist(),
            "cut_fraction": np.round(frac, 3).tolist(),
            "shift_mm": np.round(shift, 2).tolist(),
            "spacing_mm": [1.0] * nd,
        }
    raise ValueError(f"unknown grid family {family!r}; choose from {GRID_FAMILIES}")
