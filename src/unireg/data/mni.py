"""The MNI ICBM152 2009a symmetric template shipped inside nilearn's wheel (T1, GM and WM maps).

Licence: the ICBM 2009a templates are (c) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University, distributed freely with their copyright notice
(see nilearn's documentation).  UniReg does not copy them; it reads them from the installed nilearn.
"""

from __future__ import annotations

import os
from functools import lru_cache

import nibabel as nib
import nilearn
import numpy as np
import torch

from ..errors import UniRegError
from ..intensity import percentile_rescale
from ..io.image import Image
from ..preprocess import to_working_grid
from ..spatial.frames import spacing as affine_spacing
from ..spatial.world import working_grid

__all__ = ["mni_paths", "load_mni", "tissue_labels"]

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni_paths() -> dict[str, str]:
    """Paths of the T1, GM and WM files inside the installed nilearn package."""
    base = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    paths = {k: os.path.join(base, v) for k, v in _FILES.items()}
    for p in paths.values():
        if not os.path.isfile(p):
            raise UniRegError("MNI ICBM152 template missing from the nilearn install", p)
    return paths


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Hard labels from probability maps: 0 background/CSF, 1 grey matter, 2 white matter."""
    lab = np.zeros(gm.shape, dtype=np.uint8)
    lab[(gm >= 0.5) & (gm >= wm)] = 1
    lab[(wm >= 0.5) & (wm > gm)] = 2
    return lab


@lru_cache(maxsize=4)
def _load(spacing: float | None):
    p = mni_paths()
    imgs = {k: nib.load(v) for k, v in p.items()}
    affine = imgs["t1"].affine.astype(np.float64)
    arrs = {k: np.asarray(v.dataobj, dtype=np.float32) for k, v in imgs.items()}
    for k in ("gm", "wm"):  # nilearn's "converted" maps are stored as 0..255
        if arrs[k].max() > 1.5:
            arrs[k] = arrs[k] / 255.0
    if spacing is not None and spacing != 1.0:
        shape, new_aff = working_grid(arrs["t1"].shape, affine, float(spacing))
        sp = affine_spacing(affine, 3)
        arrs = {k: to_working_grid(v, affine, sp, shape, new_aff)[0].numpy() for k, v in arrs.items()}
        affine = new_aff
    return arrs, affine


def load_mni(spacing: float | None = None) -> dict:
    """The template as ``{"t1": Image, "labels": Image, "gm": ndarray, "wm": ndarray}``.

    ``spacing`` (mm) resamples to an isotropic world-aligned grid (anti-aliased); None keeps 1 mm.
    """
    arrs, affine = _load(spacing)
    # 99.5th percentile -> 1, 0 stays 0, negatives clipped (unireg.intensity)
    t1 = percentile_rescale(torch.from_numpy(arrs["t1"])[None, None], None, 99.5, clip="low")[0, 0].numpy()
    labels = tissue_labels(arrs["gm"], arrs["wm"])
    p = mni_paths()
    return {
        "t1": Image(t1[None].astype(np.float32), affine.copy(), p["t1"] if spacing in (None, 1.0) else None),
        "labels": Image(labels[None], affine.copy(), None),
        "gm": arrs["gm"].copy(),
        "wm": arrs["wm"].copy(),
    }
