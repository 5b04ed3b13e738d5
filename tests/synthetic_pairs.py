"""Tiny synthetic registration inputs shared by the end-to-end tests (not a test module).

Images are analytic functions of *world* position (RAS mm), so the same object can be sampled on
any grid (oblique, anisotropic, other field of view) and a known world translation is exact.
"""

from __future__ import annotations

import numpy as np

# (centre offset in mm, radius in mm, amplitude) of the Gaussian blobs of the phantom
BLOBS_3D = [((0.0, 0.0, 0.0), 8.0, 1.0), ((7.0, -5.0, 3.0), 4.0, 0.8), ((-6.0, 6.0, -3.0), 4.5, 0.6),
            ((3.0, 8.0, -6.0), 3.0, 0.9)]
BLOBS_2D = [((0.0, 0.0), 10.0, 1.0), ((8.0, -6.0), 4.0, 0.8), ((-9.0, 7.0), 5.0, 0.6), ((4.0, 10.0), 3.0, 0.9)]


def tiny_registrar(ndim: int, spacing: float, max_size: int = 32, **kw):
    """The small registrar every end-to-end test uses (untrained UNet, MIND features)."""
    from unireg.models.registrar import Registrar

    return Registrar(ndim, extractor="mind", unet={"enc": [8, 8, 8], "dec": [8, 8]},
                     working={"spacing": float(spacing), "max_size": max_size}, **kw)


def rotation(axis: int, deg: float) -> np.ndarray:
    """3x3 rotation about world axis ``axis`` (0=x, 1=y, 2=z)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def grid_affine(shape, spacing, rot: np.ndarray, centre) -> np.ndarray:
    """4x4 voxel-to-world affine whose grid is centred on ``centre`` (mm). 2-D: ``rot`` 2x2 or 3x3."""
    nd = len(shape)
    a = np.eye(4)
    r = np.eye(3)
    r[: rot.shape[0], : rot.shape[1]] = rot
    a[:3, :nd] = (r @ np.diag(list(spacing) + [1.0] * (3 - nd)))[:, :nd]
    cvox = np.zeros(3)
    cvox[:nd] = (np.asarray(shape) - 1) / 2.0
    full = np.array(list(centre) + [0.0] * (3 - len(centre)))
    a[:3, 3] = full - a[:3, :3] @ cvox
    return a


def world_points(shape, affine) -> np.ndarray:
    """World (RAS mm) coordinates ``(N, ndim)`` of every voxel, C order."""
    nd = len(shape)
    idx = np.indices(shape).reshape(nd, -1).astype(np.float64)
    return (affine[:nd, :nd] @ idx + affine[:nd, 3:4]).T


def phantom(shape, affine, centre, shift=None):
    """``(image float32, labels int16)`` of the blob phantom centred at ``centre`` and moved by
    ``shift`` (world mm): the value at world ``x`` is ``phantom0(x - shift)``."""
    nd = len(shape)
    blobs = BLOBS_3D if nd == 3 else BLOBS_2D
    w = world_points(shape, affine) - np.asarray(centre, dtype=np.float64)
    if shift is not None:
        w = w - np.asarray(shift, dtype=np.float64)
    img = np.zeros(len(w))
    lab = np.zeros(len(w), np.int16)
    for k, (c, r, amp) in enumerate(blobs):
        d2 = ((w - np.asarray(c)) ** 2).sum(1) / (r * r)
        img += amp * np.exp(-d2 / 2.0)
        lab[(d2 < 1.0) & (lab == 0)] = k + 1
    return img.reshape(shape).astype(np.float32), lab.reshape(shape)


def overlap_mask(a: np.ndarray, b: np.ndarray, erode: int = 1) -> np.ndarray:
    """Voxels where both resamplings are inside their source (non-zero), eroded away from the edge
    of the overlap where zero padding and interpolation mix differently."""
    from scipy import ndimage

    m = (a != 0) & (b != 0)
    return ndimage.binary_erosion(m, iterations=erode) if erode else m
