"""The embedded default job: MNI T1 (from nilearn's wheel) against a deformed T2-like copy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import api
from .data.mni import load_mni
from .data.synth import coarse_shape, deform_pair_field, make_moving, random_velocity
from .io.image import write_image
from .io.warp import write_displacement_field
from .spatial.frames import disp_vox_to_world
from .spatial.grid import warp

__all__ = ["make_demo_pair", "run_demo"]


def make_demo_pair(out_dir: Path, contrast: str = "t2", max_disp_mm: float = 8.0, seed: int = 0, spacing=None) -> dict:
    """Write ``fixed_t1.nii.gz``, ``moving_<contrast>.nii.gz``, their label maps and the true warp."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mni = load_mni(spacing)
    t1 = torch.from_numpy(mni["t1"].data[0])
    aff = mni["t1"].affine
    sp = float(mni["t1"].spacing[0])
    cshape = coarse_shape(t1.shape, 4)
    factor = (t1.shape[0] - 1) / (cshape[0] - 1)
    v = random_velocity(cshape, max_disp_mm / sp / factor, seed=seed)
    moving = make_moving(t1, v, contrast=contrast, seed=seed)
    disp_true, pull_field = deform_pair_field(v, t1.shape)
    lab = torch.from_numpy(mni["labels"].data[0].astype(np.float32))
    moving_lab = warp(lab[None, None], pull_field, mode="nearest")[0, 0].numpy().astype(np.uint8)
    paths = {
        "fixed": out_dir / "fixed_t1.nii.gz",
        "moving": out_dir / f"moving_{contrast}.nii.gz",
        "fixed_labels": out_dir / "fixed_labels.nii.gz",
        "moving_labels": out_dir / f"moving_{contrast}_labels.nii.gz",
        "true_warp": out_dir / "true_warp.nii.gz",
    }
    write_image(paths["fixed"], mni["t1"].data, aff, dtype=np.float32)
    write_image(paths["moving"], moving.numpy()[None], aff, dtype=np.float32)
    write_image(paths["fixed_labels"], mni["labels"].data, aff, dtype=np.uint8)
    write_image(paths["moving_labels"], moving_lab[None], aff, dtype=np.uint8)
    # the true fixed->moving displacement in world mm (RAS)
    disp_mm = disp_vox_to_world(disp_true[0].numpy(), aff)
    write_displacement_field(paths["true_warp"], disp_mm, aff)
    return paths


def run_demo(out_dir: Path, contrast: str = "t2", refine: int | None = None, smoothness: float = 1.0, seed: int = 0, console=None,
             progress=None) -> dict:
    """Make the pair, register it, write every output, and return the report."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if progress is not None:
        progress("make pair")
    paths = make_demo_pair(out_dir / "inputs", contrast=contrast, seed=seed)
    t_pair = time.perf_counter() - t0
    result = api.register(
        paths["fixed"], paths["moving"], labels=paths["moving_labels"], fixed_labels=paths["fixed_labels"],
        refine=refine, smoothness=smoothness, progress=progress,
    )
    t_reg = time.perf_counter()
    if progress is not None:
        progress("write")
    result.save(out_dir)
    t_save = time.perf_counter() - t_reg
    rep = dict(result.report)
    rep["demo"] = {"pair_synthesis_s": round(t_pair, 2), "write_s": round(t_save, 2), "inputs": {k: str(v) for k, v in paths.items()}}
    return rep
