"""Fixed images with labels: the MNI T1 at its native 1 mm (3-D, or one axial 2-D slice), SynthMorph-style
random label phantoms and body-like nested-ellipsoid phantoms (2-D and 3-D).

Each returns ``{"image": float32 (*S) in ~[0, 1], "labels": uint8 (*S), "affine": 4x4, "centres": (K, nd)
world mm of structures (for local deformations), "label_names"}``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ANATOMY_FAMILIES", "make_anatomy"]

ANATOMY_FAMILIES = ("mni", "labels", "body")


def _centred_affine(shape, spacing: float = 1.0, z: float = 0.0) -> np.ndarray:
    aff = np.diag([spacing] * 3 + [1.0])
    nd = len(shape)
    aff[:nd, 3] = -spacing * (np.array(shape) - 1) / 2
    if nd == 2:
        aff[2, 3] = z
    return aff


def _centroids(labels: np.ndarray, affine: np.ndarray, ids) -> np.ndarray:
    from .grids import voxel_to_world

    out = []
    for i in ids:
        idx = np.argwhere(labels == i)
        if len(idx):
            out.append(voxel_to_world(idx.mean(0)[None].astype(np.float64), affine)[0])
    return np.array(out)


def _render(labels: np.ndarray, rng: np.random.Generator, blur_vox: float = 0.7) -> np.ndarray:
    from scipy import ndimage

    lut = rng.uniform(0.15, 1.0, size=int(labels.max()) + 1)
    lut[0] = rng.uniform(0.0, 0.04)
    img = ndimage.gaussian_filter(lut[labels].astype(np.float32), blur_vox)
    tex = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
    img = img * (1 + 0.08 * tex / max(float(np.abs(tex).max()), 1e-6)) * (labels > 0) + img * (labels == 0)
    return np.clip(img, 0, None).astype(np.float32)


def _mni(ndim: int, rng: np.random.Generator, tiny: bool = False) -> dict:
    from ...data.mni import load_mni

    mni = load_mni(None)  # native 1 mm
    t1, lab, aff = mni["t1"].data[0], mni["labels"].data[0], mni["t1"].affine.copy()
    if tiny:  # a central 64^3 block (quick runs)
        lo = (66, 84, 40)
        t1, lab = t1[66:130, 84:148, 40:104], lab[66:130, 84:148, 40:104]
        aff[:3, 3] = aff[:3, 3] + aff[:3, :3] @ np.array(lo, np.float64)
    if ndim == 3:
        img, labels = t1, lab
        centres_vox = None
    else:
        z = int(rng.integers(70, 120)) if not tiny else 32
        img, labels = t1[:, :, z].copy(), lab[:, :, z].copy()
        aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * z  # this slice's origin; the plane's axes stay x, y
        centres_vox = z
    # candidate centres for local deformations: points deep inside white matter (ventricle surroundings)
    from scipy import ndimage

    wm = ndimage.binary_erosion(labels == 2, iterations=4 if ndim == 3 else 3)
    idx = np.argwhere(wm)
    pick = idx[rng.choice(len(idx), size=min(8, len(idx)), replace=False)] if len(idx) else np.empty((0, ndim))
    from .grids import voxel_to_world

    centres = voxel_to_world(pick.astype(np.float64), aff) if len(pick) else np.empty((0, ndim))
    return {
        "image": np.asarray(img, np.float32),
        "labels": labels.astype(np.uint8),
        "affine": aff,
        "centres": centres,
        "desc": {"anatomy": "mni", "resolution_mm": 1.0, **({"slice_z": centres_vox} if ndim == 2 else {})},
    }


def _labels_phantom(ndim: int, rng: np.random.Generator, tiny: bool = False) -> dict:
    """SynthMorph-style: argmax of smooth random fields inside an irregular body outline."""
    from scipy import ndimage

    full: tuple[int, ...] = (112, 128, 104) if ndim == 3 else (192, 176)
    shape = tuple(s // 3 for s in full) if tiny else full
    n_labels = int(rng.integers(6, 12))
    coarse = [max(3, s // 14) for s in shape]
    fields = [
        ndimage.zoom(rng.standard_normal(coarse), [s / c for s, c in zip(shape, coarse, strict=False)], order=3)
        for _ in range(n_labels)
    ]
    lab = (np.argmax(np.stack(fields), 0) + 1).astype(np.uint8)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    wobble = ndimage.zoom(rng.standard_normal([5] * ndim), [s / 5 for s in shape], order=3)
    lab[r + 0.1 * wobble >= 0.85] = 0
    aff = _centred_affine(shape)
    return {
        "image": _render(lab, rng),
        "labels": lab,
        "affine": aff,
        "centres": _centroids(lab, aff, range(1, n_labels + 1)),
        "desc": {"anatomy": "labels", "n_labels": n_labels},
    }


def _body_phantom(ndim: int, rng: np.random.Generator, tiny: bool = False) -> dict:
    """A torso-like body: an outer ellipsoid (fat/skin ring, muscle) with 4-7 random ellipsoidal organs."""
    full: tuple[int, ...] = (176, 128, 112) if ndim == 3 else (224, 160)
    shape = tuple(s // 3 for s in full) if tiny else full
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")

    def ellipsoid(c, radii, rot=None):
        d = [g - ci for g, ci in zip(grids, c, strict=False)]
        if rot is not None:
            d = [sum(rot[i, j] * d[j] for j in range(ndim)) for i in range(ndim)]
        return sum((di / ri) ** 2 for di, ri in zip(d, radii, strict=False)) <= 1.0

    from .grids import rotation

    body_r = np.array(shape) * rng.uniform(0.40, 0.46, ndim)
    lab = np.zeros(shape, np.uint8)
    lab[ellipsoid(np.zeros(ndim), body_r)] = 1  # skin / fat
    lab[ellipsoid(np.zeros(ndim), body_r - rng.uniform(5, 9) / (3 if tiny else 1))] = 2  # muscle / soft tissue
    n_org = int(rng.integers(4, 8))
    for k in range(n_org):
        rr = body_r * rng.uniform(0.12, 0.35, ndim)
        c = rng.uniform(-0.5, 0.5, ndim) * body_r
        rot = rotation(ndim, rng.uniform(-40, 40, 1 if ndim == 2 else 3))
        m = ellipsoid(c, rr, rot) & (lab >= 2)
        lab[m] = 3 + k
    aff = _centred_affine(shape)
    return {
        "image": _render(lab, rng, blur_vox=0.6),
        "labels": lab,
        "affine": aff,
        "centres": _centroids(lab, aff, range(3, 3 + n_org)),
        "desc": {"anatomy": "body", "n_organs": n_org},
    }


def make_anatomy(family: str, ndim: int, rng: np.random.Generator, tiny: bool = False) -> dict:
    """One fixed image of ``family`` (``tiny``: a third of the size, for quick runs and tests)."""
    if family == "mni":
        return _mni(ndim, rng, tiny)
    if family == "labels":
        return _labels_phantom(ndim, rng, tiny)
    if family == "body":
        return _body_phantom(ndim, rng, tiny)
    raise ValueError(f"unknown anatomy {family!r}; choose from {ANATOMY_FAMILIES}")
