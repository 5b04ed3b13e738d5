"""A tiny synthetic ``unireg register`` output directory, built the way the pipeline writes one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unireg.report_schema import REPORT_FORMAT, REPORT_KEYS, REQUIRED_KEYS, Report

torch.set_num_threads(1)


def _blob(shape, centre, radii):
    z = np.indices(shape, dtype=np.float32)
    r2 = sum(((z[k] - c) / r) ** 2 for k, (c, r) in enumerate(zip(centre, radii)))
    return (100.0 * np.exp(-r2) + 10.0 * (r2 < 1.0)).astype(np.float32)


def make_result_dir(root: Path, ndim: int, *, with_dice: bool = True, qc_score=0.3, qc_flag=False) -> Path:
    """Write fixed/moving inputs and warped/warp/jacobian/report.json outputs under ``root``."""
    from unireg.io.image import write_image
    from unireg.io.warp import write_displacement_field

    root.mkdir(parents=True, exist_ok=True)
    shape = (24, 20, 12) if ndim == 3 else (32, 28)
    spacing = (1.0, 1.2, 2.5) if ndim == 3 else (1.0, 0.8)
    affine = np.diag([*spacing, *([1.0] * (3 - ndim)), 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    c = [n / 2 for n in shape]
    fixed = _blob(shape, c, [n / 4 for n in shape])
    moving = _blob(shape, [x + 2 for x in c], [n / 4 for n in shape])
    # moving on a shifted grid: its world position differs from the fixed one by one voxel along axis 0
    m_aff = affine.copy()
    m_aff[0, 3] += spacing[0]
    z = np.indices(shape, dtype=np.float32)
    disp_world = np.stack([np.full(shape, 1.5, np.float32)] + [0.5 * np.sin(z[0] / 4)] * (ndim - 1))
    disp_world[1, 5:8, 5:8] = -6.0  # a fold
    from unireg.spatial.frames import disp_world_to_vox
    from unireg.spatial.jacobian import jacobian_determinant

    jac = jacobian_determinant(torch.from_numpy(disp_world_to_vox(disp_world, affine))[None])[0].numpy()
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    write_image(inputs / "fixed.nii.gz", fixed, affine)
    write_image(inputs / "moving.nii.gz", moving, m_aff)
    out = root / "out"
    out.mkdir(exist_ok=True)
    write_image(out / "warped.nii.gz", _blob(shape, [x + 0.3 for x in c], [n / 4 for n in shape]), affine)
    write_displacement_field(out / "warp.nii.gz", disp_world, affine)
    write_displacement_field(out / "inverse_warp.nii.gz", -disp_world, affine)
    write_image(out / "jacobian.nii.gz", jac, affine)
    report: Report = {
        "format_version": REPORT_FORMAT,
        "ndim": ndim,
        "model_trained": True,
        "affine": True,
        "affine_matrix": np.eye(4).tolist(),
        "refine_iterations": 3,
        "refine_levels": [{"level": "coarse", "iterations": 3}],
        "smoothness": 1.0,
        "working_grid": {"shape": list(shape), "spacing_mm": 2.0},
        "native_grid": None,
        "device": "cpu",
        "threads": 1,
        "seed": 0,
        "stages": {"affine": {"kept": True, "reason": "test"}},
        "fixed": str((inputs / "fixed.nii.gz").resolve()),
        "moving": str((inputs / "moving.nii.gz").resolve()),
        "labels": None,
        "fixed_labels": None,
        # the stages pipeline.register_images times (tests/test_outputs.py checks these keys against a real run)
        "runtime_s": {"preprocess": 0.05, "affine": 0.1, "features": 0.02, "network": 0.03, "refine": 0.4,
                      "integrate": 0.01, "qc": 0.05, "resample": 0.06, "total": 0.72},
        "folded_percent": float((jac <= 0).mean() * 100),
        "sdlogj": 0.12,
        "extractor": "mind",
        "model": "unireg-test",
        "versions": {"unireg": "0.1.0", "torch": torch.__version__},
        "qc_score": qc_score,
        "qc_flag": qc_flag,
    }
    assert REQUIRED_KEYS <= set(report) <= REPORT_KEYS, set(report) ^ REPORT_KEYS  # the schema is the source
    if with_dice:
        report["dice"] = {"1": 0.91, "2": 0.85, "mean": 0.88}
        report["dice_before"] = {"1": 0.7, "2": 0.6, "mean": 0.65}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return out


@pytest.fixture
def result_dir_3d(tmp_path):
    return make_result_dir(tmp_path / "r3", 3)


@pytest.fixture
def result_dir_2d(tmp_path):
    return make_result_dir(tmp_path / "r2", 2, with_dice=False, qc_score=None, qc_flag=None)
