"""Affine transform files in ITK's format (``.mat`` MATLAB binary as ANTs writes, ``.txt``/``.tfm`` text).

ITK (and so ANTs, SimpleITK, elastix' ITK transforms) stores a transform in LPS physical
coordinates, mapping a point of the *fixed* (output) space to the *moving* (input) space: the
direction ``antsApplyTransforms -t`` expects.  In memory UniReg keeps the same direction in RAS:
a 4x4 ``T`` mapping fixed world (RAS mm) to moving world (RAS mm).  The conversion is
``T_lps = F T F`` with ``F = diag(-1, -1, 1, 1)``, done here only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UniRegError
from .atomic import atomic_path

__all__ = ["read_affine", "write_affine", "AFFINE_EXTS"]

AFFINE_EXTS = (".mat", ".txt", ".tfm")
_F = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ext(p: Path) -> str:
    return p.suffix.lower()


def write_affine(path: str | os.PathLike, matrix_ras: np.ndarray, ndim: int = 3) -> Path:
    """Write the fixed->moving RAS affine ``matrix_ras`` (4x4) as an ITK ``AffineTransform``.

    ``ndim=2`` writes ``AffineTransform_double_2_2`` (in-plane x, y part).  ``.mat`` is the binary
    format ANTs writes (``*0GenericAffine.mat``); ``.txt``/``.tfm`` is ITK's text format.
    """
    import SimpleITK as sitk

    p = Path(path)
    if _ext(p) not in AFFINE_EXTS:
        raise UniRegError(f"affine transform files end in {', '.join(AFFINE_EXTS)}", p)
    m = _F @ np.asarray(matrix_ras, dtype=np.float64) @ _F
    if ndim == 3:
        t = sitk.AffineTransform(3)
        t.SetMatrix(m[:3, :3].ravel().tolist())
        t.SetTranslation(m[:3, 3].tolist())
    else:
        t = sitk.AffineTransform(2)
        t.SetMatrix(m[:2, :2].ravel().tolist())
        t.SetTranslation(m[:2, 3].tolist())
    with atomic_path(p) as tmp:  # the temporary name keeps the extension SimpleITK picks the format by
        sitk.WriteTransform(t, str(tmp))
    return p


def read_affine(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an ITK/ANTs linear transform file -> 4x4 fixed->moving RAS matrix.

    Any linear ITK transform (Affine, Euler, Similarity, Versor, Translation, MatrixOffset, or a
    composite of them) is accepted: the matrix is recovered by mapping the origin and the unit
    points, then checked to be affine.  2-D transforms become 4x4 with identity on z.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise UniRegError("transform file not found", p)
    try:
        t = sitk.ReadTransform(str(p))
    except Exception as e:
        line = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UniRegError(f"cannot read ITK transform ({line[-1][:200] if line else type(e).__name__})", p) from None
    nd = t.GetDimension()
    if ndim is not None and nd != ndim:
        raise UniRegError(f"transform is {nd}-D but the images are {ndim}-D", p)
    try:
        o = np.array(t.TransformPoint([0.0] * nd))
        a = np.stack([np.array(t.TransformPoint(list(e))) - o for e in np.eye(nd)], 1)
        probe = np.array([13.7, -8.1, 21.3][:nd])
        ok = np.allclose(np.array(t.TransformPoint(probe.tolist())), a @ probe + o, atol=1e-4)
    except Exception as e:
        raise UniRegError(f"cannot evaluate transform ({type(e).__name__})", p) from None
    if not ok:
        raise UniRegError(f"{t.GetName()} is not a linear (affine) transform; give an affine .mat/.txt", p)
    m = np.eye(4)
    m[:nd, :nd] = a
    m[:nd, 3] = o
    return _F @ m @ _F
