"""Benchmark pairs with a known deformation (shared by cross_domain.py, speed.py and
experiments/domain_shift/analyze.py).  Not part of the installed package.

Ground truth.  A smooth stationary velocity ``v`` is drawn on (a coarse copy of) the fixed grid;
``u = exp(v)`` is the true fixed -> moving displacement (what ``warp.nii.gz`` should hold) and
``exp(-v)`` carries moving-space points back to the fixed/template space.  Every moving image is
rendered *in world space*: each moving voxel at world ``y`` takes the source value at
``y + exp(-v)(y)``, so the moving image may live on any grid (e.g. thick anisotropic slices) while the
true warp stays exact on the fixed grid.

Cases (``CASES``): ``t1`` (training domain), ``t2``/``pd``/``flair``/``ct`` (modality shift: intensity
remap + bias field + noise), ``aniso`` (T1 on 1x1x3 mm thick slices -- 1 x 1 x 3 times the template's
1 mm -- with 3x the noise and a stronger bias), ``synth`` (anatomy shift: random smooth label maps
rendered with random intensities, a different draw of intensities for fixed and moving,
SynthMorph-style).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from unireg.data.mni import load_mni
from unireg.data.synth import add_noise, bias_field, coarse_shape, deform_pair_field, random_velocity, remap_contrast
from unireg.io.image import write_image
from unireg.io.warp import write_displacement_field
from unireg.spatial.grid import sample
from unireg.spatial.world import affine_nd, pull

CASES = ["t1", "t2", "pd", "flair", "ct", "aniso", "synth"]
CASE_TITLES = {
    "t1": "training domain (T1 -> T1)",
    "t2": "modality shift: T2-like",
    "pd": "modality shift: PD-like",
    "flair": "modality shift: FLAIR-like",
    "ct": "modality shift: CT-like",
    "aniso": "resolution/scanner shift: 1x1x3 mm, low SNR",
    "synth": "anatomy shift: random label maps",
}
MAX_DISP_MM = 8.0
SLICES_2D = (80, 95, 110)  # axial slices (1 mm template) used by 2-D seeds 0, 1, 2, ...


def _mni2d(seed: int) -> dict:
    """One axial 1 mm slice of the template as a 2-D image (the x-y plane of world space)."""
    mni = load_mni(None)
    z = SLICES_2D[seed % len(SLICES_2D)] + 3 * (seed // len(SLICES_2D))
    aff = mni["t1"].affine.copy()
    aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * z  # the slice's origin; the plane's axes stay x, y
    return {"t1": mni["t1"].data[0][:, :, z].copy(), "labels": mni["labels"].data[0][:, :, z].copy(), "affine": aff}


def _field_at(field_mm: torch.Tensor, field_aff: np.ndarray, world: torch.Tensor) -> torch.Tensor:
    """Sample a world-space field ``(nd, *F)`` (on ``field_aff``) at world points ``(nd, *P)``."""
    nd = field_mm.shape[0]
    inv = torch.as_tensor(np.linalg.inv(affine_nd(field_aff, nd)), dtype=world.dtype)
    vox = torch.einsum("ij,j...->i...", inv[:nd, :nd], world) + inv[:nd, nd].view(nd, *([1] * (world.dim() - 1)))
    return sample(field_mm[None].to(world.dtype), vox[None], padding_mode="border")[0]


def _to_mm(disp_vox: torch.Tensor, aff: np.ndarray) -> torch.Tensor:
    nd = disp_vox.shape[0]
    a = torch.as_tensor(affine_nd(aff, nd)[:nd, :nd], dtype=torch.float32)
    return torch.einsum("ij,j...->i...", a, disp_vox.float())


def random_label_map(shape, seed: int, n_labels: int = 10) -> np.ndarray:
    """SynthMorph-style anatomy: argmax of smooth random fields inside a smooth random blob (0 outside)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    nd = len(shape)
    coarse = [max(3, s // 12) for s in shape]
    fields = [ndimage.zoom(rng.standard_normal(coarse), [s / c for s, c in zip(shape, coarse)], order=3) for _ in range(n_labels)]
    lab = np.argmax(np.stack(fields), 0).astype(np.uint8) + 1
    # a smooth, irregular "body" so the image has a background and an outline
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    wobble = ndimage.zoom(rng.standard_normal([4] * nd), [s / 4 for s in shape], order=3)
    body = r + 0.12 * wobble < 0.8
    lab[~body] = 0
    return lab


def render_labels(lab: np.ndarray, seed: int, noise: float = 0.03, blur_vox: float = 0.8) -> np.ndarray:
    """Random intensity per label (background dark), blur, bias and noise -> float32 image in ~[0, 1]."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    lut = rng.uniform(0.15, 1.0, size=int(lab.max()) + 1).astype(np.float32)
    lut[0] = rng.uniform(0.0, 0.05)
    img = ndimage.gaussian_filter(lut[lab], blur_vox)
    img = img * bias_field(lab.shape, 0.2, seed).numpy()
    img = add_noise(torch.from_numpy(img), noise, seed).clamp_min(0).numpy()
    return img.astype(np.float32)


def make_case(case: str, ndim: int, seed: int, spacing: float | None = None) -> dict:
    """Synthesise one pair in memory.

    Returns ``{"fixed", "moving", "fixed_labels", "moving_labels"}`` as ``(array (*S), affine4)`` tuples,
    plus ``"true_warp_mm"`` ``(nd, *S_fixed)`` (RAS mm, fixed -> moving) and ``"meta"``.
    ``spacing``: fixed grid spacing for 3-D (default 2 mm); 2-D pairs are 1 mm slices.
    """
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {CASES}")
    spacing = (2.0 if ndim == 3 else 1.0) if spacing is None else float(spacing)
    # --- fixed image, labels, grid -------------------------------------------------------------
    if case == "synth":
        shape = (96, 96, 96) if ndim == 3 else (160, 160)
        shape = tuple(int(round(s * (2.0 if ndim == 3 else 1.0) / spacing)) for s in shape)
        f_aff = np.diag([spacing] * 3 + [1.0])
        f_aff[:ndim, 3] = -spacing * (np.array(shape) - 1) / 2
        f_lab = random_label_map(shape, seed=1000 + seed)
        f_img = render_labels(f_lab, seed=2000 + seed)
        source, s_aff = None, None
    elif ndim == 3:
        mni = load_mni(spacing if spacing != 1.0 else None)
        f_img, f_lab, f_aff = mni["t1"].data[0], mni["labels"].data[0], mni["t1"].affine
        source, s_aff = f_img, f_aff
    else:
        sl = _mni2d(seed)
        f_img, f_lab, f_aff = sl["t1"], sl["labels"], sl["affine"]
        source, s_aff = f_img, f_aff
    shape = f_img.shape
    # --- known deformation on the fixed grid --------------------------------------------------------
    cshape = coarse_shape(shape, 4)
    factor = (shape[0] - 1) / (cshape[0] - 1)
    v = random_velocity(cshape, MAX_DISP_MM / spacing / factor, seed=seed)
    fwd_vox, inv_vox = deform_pair_field(v, shape)
    true_mm = _to_mm(fwd_vox[0], f_aff)
    inv_mm = _to_mm(inv_vox[0], f_aff)

    def world_map(world, rows):
        return world + _field_at(inv_mm, f_aff, world)

    # --- moving grid and source ------------------------------------------------------------------
    m_aff, m_shape, thick = f_aff, shape, 1
    src_lab, src_lab_aff = f_lab, f_aff
    if case == "aniso":
        # thick slices along the last axis: render at 1 mm and average every 3 slices
        if ndim == 3 and spacing != 1.0:
            mni1 = load_mni(None)
            source, s_aff = mni1["t1"].data[0], mni1["t1"].affine
            src_lab, src_lab_aff = mni1["labels"].data[0], mni1["t1"].affine
        m_aff = np.asarray(s_aff, dtype=np.float64)
        m_shape = source.shape
        thick = 3
    if case == "synth":
        m_lab = pull(torch.from_numpy(f_lab.astype(np.float32))[None], f_aff, shape, f_aff, world_map=world_map, mode="nearest")[0]
        m_lab = m_lab.round().numpy().astype(np.uint8)
        m_img = render_labels(m_lab, seed=3000 + seed)  # a different intensity draw: cross-"modality" too
    else:
        src = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None]
        m_img = pull(src, s_aff, m_shape, m_aff, world_map=world_map)[0]
        lab_t = torch.from_numpy(src_lab.astype(np.float32))[None]
        m_lab = pull(lab_t, src_lab_aff, m_shape, m_aff, world_map=world_map, mode="nearest")[0].round().numpy().astype(np.uint8)
        if thick > 1:
            ax = ndim - 1
            n = (m_shape[ax] // thick) * thick
            idx = [slice(None)] * ndim
            idx[ax] = slice(0, n)
            m_img = m_img[tuple(idx)]
            new_shape = list(m_img.shape)
            new_shape[ax] = n // thick
            split = list(m_img.shape[:ax]) + [n // thick, thick] + list(m_img.shape[ax + 1:])
            m_img = m_img.reshape(split).mean(ax + 1)
            lab_idx = [slice(None)] * ndim
            lab_idx[ax] = slice(1, n, thick)  # the label at each thick slice's centre
            m_lab = m_lab[tuple(lab_idx)]
            m_aff = m_aff.copy()
            m_aff[:3, 3] = m_aff[:3, 3] + m_aff[:3, ax] * (thick - 1) / 2.0  # centre of the first slab
            m_aff[:3, ax] = m_aff[:3, ax] * thick
        contrast = case if case in ("t1", "t2", "pd", "flair", "ct") else "t1"
        bias, noise = (0.3, 0.06) if case == "aniso" else (0.2, 0.02)
        m_img = remap_contrast(m_img, contrast) * bias_field(tuple(m_img.shape), bias, seed)
        m_img = add_noise(m_img, noise, seed).clamp_min(0).numpy()
    meta = {"case": case, "ndim": ndim, "seed": seed, "fixed_shape": list(shape), "moving_shape": list(m_img.shape),
            "fixed_spacing_mm": float(spacing), "moving_spacing_mm": np.linalg.norm(m_aff[:3, :ndim], axis=0).round(3).tolist(),
            "max_disp_mm": MAX_DISP_MM}
    return {"fixed": (np.asarray(f_img, np.float32), f_aff), "moving": (np.asarray(m_img, np.float32), m_aff),
            "fixed_labels": (np.asarray(f_lab, np.uint8), f_aff), "moving_labels": (np.asarray(m_lab, np.uint8), m_aff),
            "true_warp_mm": true_mm.numpy(), "meta": meta}


def write_case(pair: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write a pair from :func:`make_case` as NIfTI files (+ meta.json); returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels", "true_warp")}
    for k in ("fixed", "moving"):
        write_image(paths[k], pair[k][0][None], pair[k][1], dtype=np.float32)
    for k in ("fixed_labels", "moving_labels"):
        write_image(paths[k], pair[k][0][None], pair[k][1], dtype=np.uint8)
    write_displacement_field(paths["true_warp"], pair["true_warp_mm"], pair["fixed"][1])
    (out / "meta.json").write_text(json.dumps(pair["meta"], indent=1))
    return paths


def machine_description() -> str:
    import os
    import platform

    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover
        mem = "RAM unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem}, no GPU; Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
