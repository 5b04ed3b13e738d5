"""Coordinate frames: voxel <-> world (RAS mm), RAS <-> LPS, spacing, world <-> voxel displacements.

The one owner of these conventions (see ``docs/conventions.md``).  NumPy only, no torch, so that
:mod:`unireg.io` can use it without paying torch's import time.

* An affine is the 4x4 voxel-to-world matrix in RAS millimetres (as nibabel reads it).  A 2-D
  image's in-plane axes are voxel axes 0 and 1 and the affine's columns 0 and 1; its
  ``(3, 3)`` voxel-to-world matrix is rows/columns ``(0, 1, 3)`` of the 4x4 (:func:`affine_nd`).
* ITK, ANTs, MetaImage and NRRD use LPS: ``LPS = diag(-1, -1, 1) @ RAS``.  :func:`ras_to_lps` /
  :func:`lps_to_ras` convert points and vectors (components on an axis), :func:`affine_ras_to_lps`
  / :func:`affine_lps_to_ras` convert 4x4 voxel-to-world matrices.
* A world displacement ``disp_mm`` ``(ndim, *S)`` (RAS components) and a voxel displacement
  ``disp_vox`` ``(ndim, *S)`` (array-axis components) on a grid with affine ``A`` are related by
  ``disp_mm = A[:3, :ndim] @ disp_vox``; the inverse is the least-squares solution (pseudo-inverse),
  which for a 3-D grid (or a 2-D grid in the world x-y plane) is the exact inverse and for an
  oblique 2-D plane projects an off-plane displacement onto the plane.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "affine_nd",
    "embed_nd",
    "apply_homogeneous",
    "voxel_to_world",
    "world_to_voxel",
    "spacing",
    "ras_to_lps",
    "lps_to_ras",
    "affine_ras_to_lps",
    "affine_lps_to_ras",
    "disp_vox_to_world",
    "disp_world_to_vox",
    "grids_match",
    "world_coverage",
]

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS on homogeneous coordinates; its own inverse


def affine_nd(affine4: np.ndarray, ndim: int) -> np.ndarray:
    """The ``(ndim+1, ndim+1)`` voxel-to-world matrix of an image whose 4x4 affine is ``affine4``.

    For 2-D images the in-plane axes are voxel axes 0 and 1 and world axes x and y.
    """
    a = np.asarray(affine4, dtype=np.float64)
    if ndim == 3:
        return a.copy()
    idx = [0, 1, 3]
    return a[np.ix_(idx, idx)].copy()


def embed_nd(matrix_nd: np.ndarray, ndim: int) -> np.ndarray:
    """Inverse of :func:`affine_nd`: an (ndim+1)-square matrix back to 4x4 (identity on z for 2-D)."""
    if ndim == 3:
        return np.asarray(matrix_nd, dtype=np.float64).copy()
    out = np.eye(4)
    idx = [0, 1, 3]
    out[np.ix_(idx, idx)] = matrix_nd
    return out


def apply_homogeneous(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply an (n+1)x(n+1) matrix to points ``(N, n)``."""
    n = matrix.shape[0] - 1
    return points @ matrix[:n, :n].T + matrix[:n, n]


def voxel_to_world(points_vox: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``(N, ndim)`` (array-axis order) -> world points ``(N, ndim)`` (RAS mm)."""
    p = np.asarray(points_vox, dtype=np.float64)
    return apply_homogeneous(affine_nd(affine4, p.shape[-1]), p)


def world_to_voxel(points_world: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    """World points ``(N, ndim)`` (RAS mm) -> voxel coordinates ``(N, ndim)``; inverse of :func:`voxel_to_world`."""
    p = np.asarray(points_world, dtype=np.float64)
    return apply_homogeneous(np.linalg.inv(affine_nd(affine4, p.shape[-1])), p)


def spacing(affine4: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Voxel size in mm along each of the first ``ndim`` voxel axes: the norms of the affine's columns."""
    return np.linalg.norm(np.asarray(affine4, dtype=np.float64)[:3, :ndim], axis=0)


def ras_to_lps(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """RAS points or vectors -> LPS (negate the first two components along ``axis``; 2 or 3 components)."""
    out = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float32), copy=True)
    idx = [slice(None)] * out.ndim
    idx[axis] = slice(0, 2)
    out[tuple(idx)] *= -1.0
    return out


def lps_to_ras(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """LPS points or vectors -> RAS (the same flip: the conversion is its own inverse)."""
    return ras_to_lps(x, axis)


def affine_ras_to_lps(affine4: np.ndarray) -> np.ndarray:
    """4x4 voxel-to-world RAS affine -> voxel-to-world LPS affine (``diag(-1, -1, 1, 1) @ A``)."""
    return _FLIP @ np.asarray(affine4, dtype=np.float64)


def affine_lps_to_ras(affine4: np.ndarray) -> np.ndarray:
    """4x4 voxel-to-world LPS affine -> RAS (the same flip)."""
    return _FLIP @ np.asarray(affine4, dtype=np.float64)


def disp_vox_to_world(disp_vox: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    """Voxel displacement ``(ndim, *S)`` (array-axis components) -> world ``(ndim, *S)`` (RAS mm).

    A 2-D field's world components are RAS x and y (the image plane is taken as the x-y plane).
    """
    d = np.asarray(disp_vox, dtype=np.float64)
    nd = d.shape[0]
    lin = np.asarray(affine4, dtype=np.float64)[:nd, :nd]
    return np.einsum("ij,j...->i...", lin, d).astype(np.float32)


def disp_world_to_vox(disp_world: np.ndarray, affine4: np.ndarray) -> np.ndarray:
    """World (RAS mm) displacement ``(ndim, *S)`` -> array-axis voxel components ``(ndim, *S)``, float32.

    Least squares through the pseudo-inverse of ``A[:3, :ndim]``: exact for 3-D and for 2-D grids in
    the world x-y plane; for an oblique 2-D plane a (zero-z) world displacement is projected onto it.
    """
    d = np.asarray(disp_world, dtype=np.float64)
    nd = d.shape[0]
    inv = np.linalg.pinv(np.asarray(affine4, dtype=np.float64)[:3, :nd])  # (nd, 3)
    if nd == 2:  # a 2-D world field carries (x, y); z is zero
        d = np.concatenate([d, np.zeros_like(d[:1])], axis=0)
    return np.einsum("ij,j...->i...", inv, d).astype(np.float32)


def grids_match(shape_a, affine_a: np.ndarray, shape_b, affine_b: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether two grids are one: the same shape and voxel-to-world 4x4 matrices equal within ``tol`` mm
    (headers written in float32 by another program round differently).  For 2-D grids only the in-plane
    columns and the origin are compared (column 2, the normal, carries no sampling information)."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    cols = list(range(len(shape_a))) + [3]
    a, b = np.asarray(affine_a, dtype=np.float64), np.asarray(affine_b, dtype=np.float64)
    return bool(np.allclose(a[:3, cols], b[:3, cols], rtol=0.0, atol=tol))


def world_coverage(
    values: np.ndarray, affine4: np.ndarray, ref_shape, ref_affine4: np.ndarray, max_points: int = 200_000
) -> float:
    """The share of ``values``' nonzero voxels (on ``affine4``) whose world position lies inside the grid
    ``(ref_shape, ref_affine4)`` (its voxels' extent, half a voxel beyond the outer centres); 0.0 when
    nothing is nonzero.  At most ``max_points`` voxels are tested (an even stride through them)."""
    nd = len(ref_shape)
    values = np.asarray(values)
    flat = np.flatnonzero(values)
    if len(flat) == 0:
        return 0.0
    flat = flat[:: max(1, len(flat) // max_points)]
    idx = np.stack(np.unravel_index(flat, values.shape), axis=1).astype(np.float64)
    to_ref = np.linalg.inv(affine_nd(ref_affine4, nd)) @ affine_nd(affine4, nd)
    v = idx @ to_ref[:nd, :nd].T + to_ref[:nd, nd]
    inside = np.all((v >= -0.5) & (v <= np.asarray(ref_shape, dtype=np.float64) - 0.5), axis=1)
    return float(inside.mean())
