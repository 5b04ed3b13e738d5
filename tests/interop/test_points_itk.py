"""`apply-points` agrees with SimpleITK's DisplacementFieldTransform inside, at the edge and outside the grid."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from unireg import api
from unireg.cli.main import app
from unireg.io.warp import write_displacement_field

from ..synthetic_pairs import grid_affine, rotation

sitk = pytest.importorskip("SimpleITK")


def _field(tmp_path):
    shape = (12, 10, 8)
    aff = grid_affine(shape, (2.0, 2.5, 3.0), rotation(2, 20), np.array([5.0, -3.0, 2.0]))
    rng = np.random.default_rng(0)
    disp = rng.normal(0, 2.0, (3,) + shape).astype(np.float32)
    p = tmp_path / "warp.nii.gz"
    write_displacement_field(p, disp, aff)
    return p, shape, aff


def _sitk_map(path, pts_ras):
    tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    flip = np.array([-1.0, -1.0, 1.0])
    return np.array([np.array(tx.TransformPoint((p * flip).tolist())) * flip for p in pts_ras])


def test_points_inside_edge_and_outside_match_simpleitk(tmp_path):
    p, shape, aff = _field(tmp_path)
    rng = np.random.default_rng(1)
    # continuous indices from well outside to well inside, including the half-voxel rim
    idx = rng.uniform(-3, 1, (400, 3)) * (np.array(shape) + 2) / 1.0
    idx = np.concatenate([idx, rng.uniform(-0.6, np.array(shape) - 0.4, (400, 3))])
    pts = idx @ aff[:3, :3].T + aff[:3, 3]
    with pytest.warns(api.PointsOutsideWarning, match="outside the warp's grid"):
        ours = api.apply_points(p, pts)
    theirs = _sitk_map(p, pts)
    assert np.abs(ours - theirs).max() < 1e-3
    outside = np.any((idx < -0.5) | (idx > np.array(shape) - 0.5), axis=1)
    assert outside.sum() > 100 and np.allclose(ours[outside], pts[outside])


def test_cli_warns_for_points_outside(tmp_path):
    p, shape, aff = _field(tmp_path)
    far = aff[:3, 3] + 1000.0
    centre = aff[:3, :3] @ ((np.array(shape) - 1) / 2) + aff[:3, 3]
    (tmp_path / "pts.csv").write_text("x,y,z\n" + "\n".join(",".join(f"{v:.4f}" for v in q) for q in (far, centre)) + "\n")
    r = CliRunner().invoke(app, ["apply-points", str(p), str(tmp_path / "pts.csv"), "--out", str(tmp_path / "o.csv")])
    assert r.exit_code == 0, r.output
    assert "1 of 2 points lie outside" in r.stderr
    rows = (tmp_path / "o.csv").read_text().splitlines()[1:]
    assert np.allclose([float(v) for v in rows[0].split(",")[:3]], far, atol=1e-3)
