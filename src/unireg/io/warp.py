"""Displacement-field files in the layout ITK and ANTs read.

On disk a field is a 5-D NIfTI of shape ``(X, Y, Z, 1, 3)`` (2-D: ``(X, Y, 1, 1, 2)``), intent
code 1007 (``NIFTI_INTENT_VECTOR``), float32, on the fixed image's grid (qform = sform = its
affine), with displacements in **millimetres, LPS**.  Loaded with
``sitk.DisplacementFieldTransform`` (or ``antsApplyTransforms``) it maps a fixed-space physical
point ``p`` to ``p + u(p)`` in moving space, i.e. it is the pull-back ``moving_to_fixed`` warp.

In memory (arguments and return values here) the field is ``disp_mm_ras`` ``(ndim, *spatial)``:
world displacement in RAS mm, components (x, y[, z]) in world-axis order, sampled on the voxel
grid of ``affine``.  A 2-D field's components are the RAS x and y displacements; the image plane
is assumed to be the world x-y plane, as for 2-D NIfTI and PNG files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unireg.errors import UniRegError
from unireg.io.image import (
    _as_numpy,
    _check_exists,
    _nifti_image,
    _one_line,
    _read_nifti_gz_isal,
    _write_nifti,
    image_ext,
)
from unireg.spatial.frames import lps_to_ras, ras_to_lps

__all__ = ["write_displacement_field", "read_displacement_field", "NIFTI_INTENT_VECTOR"]

NIFTI_INTENT_VECTOR = 1007


def write_displacement_field(path: str | os.PathLike, disp_mm_ras, affine) -> Path:
    """Write a world-space displacement field as an ITK/ANTs NIfTI warp, atomically.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` (ISA-L compressed).
    disp_mm_ras : array-like or torch.Tensor
        ``(ndim, *spatial)`` with ``ndim`` in {2, 3}: displacement in RAS mm at each voxel of the
        grid of ``affine``.
    affine : array-like
        4x4 voxel-to-world affine (RAS mm) of the grid the field is sampled on.

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    if image_ext(p) not in (".nii", ".nii.gz"):
        raise UniRegError("displacement fields are written as NIfTI; use .nii or .nii.gz", p)
    d = np.asarray(_as_numpy(disp_mm_ras), dtype=np.float32)
    nd = d.shape[0] if d.ndim else 0
    if nd not in (2, 3) or d.ndim != nd + 1:
        raise ValueError(f"disp_mm_ras must be (ndim, *spatial) with ndim 2 or 3, got shape {d.shape}")
    affine = np.asarray(_as_numpy(affine), dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    # (*spatial, ndim), LPS on disk, laid out as NIfTI stores it (first axis fastest, component slowest):
    # written in one pass per component, sign and transposition at once (C order (ndim, ..., X) is that
    # layout), where flipping and then transposing took two passes over the field
    lps = np.empty((nd,) + d.shape[:0:-1], dtype=np.float32)
    signs = ras_to_lps(np.ones(nd, dtype=np.float32))  # the convention's own flips, per component
    for c in range(nd):
        np.multiply(d[c].T, signs[c], out=lps[c])
    vec = lps.T
    vec = vec[:, :, :, None, :] if nd == 3 else vec[:, :, None, None, :]
    img = _nifti_image(vec, affine)
    img.header.set_intent(NIFTI_INTENT_VECTOR)
    _write_nifti(p, img)
    return p


def read_displacement_field(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK/ANTs NIfTI displacement field.

    Returns
    -------
    disp_mm_ras : np.ndarray
        ``(ndim, *spatial)`` float32, displacement in RAS mm (LPS on disk, converted).
    affine : np.ndarray
        4x4 float64 voxel-to-world affine (RAS mm) of the field's grid.

    Raises
    ------
    UniRegError
        Missing/unreadable file, not a 5-D ``(X, Y, Z, 1, ndim)`` vector image, intent code other
        than 1007, or NaN/Inf displacements.
    """
    import nibabel as nib

    p = Path(path)
    _check_exists(p)
    if image_ext(p) not in (".nii", ".nii.gz"):
        raise UniRegError("displacement fields must be NIfTI (.nii or .nii.gz)", p)
    try:
        # ISA-L for a .nii.gz (a 1 mm head's field: 0.8-1.4 -> 0.4-0.8 s), nibabel's own reader otherwise
        fast = _read_nifti_gz_isal(p) if p.name.lower().endswith(".gz") else None
        if fast is not None:
            raw, affine, header = fast
        else:
            img = nib.load(str(p))
            raw, affine, header = img.dataobj, np.array(img.affine, dtype=np.float64), img.header
        intent = int(header["intent_code"])
        arr = np.asarray(raw, dtype=np.float32)
    except Exception as e:
        raise UniRegError(f"cannot read NIfTI file ({_one_line(e)})", p) from None
    s = arr.shape
    if arr.ndim != 5 or s[3] != 1 or s[4] not in (2, 3) or (s[4] == 2 and s[2] != 1):
        raise UniRegError(f"not a displacement field: expected a 5-D (X, Y, Z, 1, ndim) vector image, got shape {s}", p)
    if intent != NIFTI_INTENT_VECTOR:
        raise UniRegError(f"NIfTI intent code is {intent}, expected {NIFTI_INTENT_VECTOR} (vector) for a displacement field", p)
    vec = arr[:, :, :, 0, :] if s[4] == 3 else arr[:, :, 0, 0, :]
    nbad = int(vec.size - np.count_nonzero(np.isfinite(vec)))
    if nbad:
        raise UniRegError(f"{nbad} displacement values are NaN or Inf", p)
    vec = lps_to_ras(vec).astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(vec, -1, 0)), affine
