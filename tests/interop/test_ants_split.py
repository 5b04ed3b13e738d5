"""affine.mat + deformable_warp.nii.gz reproduce UniReg's whole map in ANTs (antspyx), both ways.

The map is built by hand (a 3-D affine with rotation/scale/shear and a smooth deformable part of up to
~5 mm) so the test knows the deformable part is large, then written by the same code ``save`` uses.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unireg.io.image import Image, write_image
from unireg.io.transform import read_affine, write_affine
from unireg.outputs import OUTPUT_NAMES, _InLine, _submit_ants_split
from unireg.pipeline import FixedToMoving, displacement_on_grid
from unireg.spatial.world import pull, working_grid

from ..synthetic_pairs import grid_affine, phantom, rotation

ants = pytest.importorskip("ants")
CENTRE = np.array([2.0, -3.0, 5.0])


def _corr(a, b, mask):
    a, b = a[mask].ravel(), b[mask].ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("ants_split")
    fs, fa = (40, 36, 32), grid_affine((40, 36, 32), (1.5, 1.6, 1.8), rotation(2, 10), CENTRE)
    ms, ma = (36, 38, 30), grid_affine((36, 38, 30), (1.7, 1.5, 2.0), rotation(0, -12), CENTRE + [2.0, 1.0, -1.0])
    f, _ = phantom(fs, fa, CENTRE)
    m, _ = phantom(ms, ma, CENTRE, shift=(3.0, -2.0, 1.0))
    fixed, moving = Image(f[None], fa, None), Image(m[None], ma, None)
    t = np.eye(4)
    t[:3, :3] = rotation(1, 7) @ np.array([[1.04, 0.03, 0.0], [0.0, 0.97, 0.02], [0.01, 0.0, 1.02]])
    t[:3, 3] = [2.5, -1.5, 1.0]
    w_shape, w_aff = working_grid(fs, fa, spacing=2.0)
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in w_shape], indexing="ij"))
    disp = torch.stack(
        [
            2.2 * torch.sin(np.pi * g[1]) * torch.cos(np.pi * g[2] / 2),  # voxels of 2 mm: up to ~5 mm
            1.8 * torch.cos(np.pi * g[0] / 2) * torch.sin(np.pi * g[2]),
            1.5 * torch.sin(np.pi * g[0]) * torch.cos(np.pi * g[1] / 2),
        ]
    )[None].float()
    # the inverse of a smooth displacement by fixed-point iteration: u_inv(x) = -u(x + u_inv(x))
    from unireg.spatial.grid import identity_coords, sample

    ident = identity_coords(w_shape)
    inv = -disp.clone()
    for _ in range(30):
        inv = -sample(disp, (ident + inv[0])[None], padding_mode="border")
    mapping = FixedToMoving(3, w_aff, t, disp, inv)
    warp_mm = displacement_on_grid(mapping.forward, fs, fa)  # what the resample stage gives save()
    res = SimpleNamespace(fixed=fixed, moving=moving, affine_matrix=t, mapping=mapping, warp_mm=warp_mm)
    paths = {k: d / v for k, v in OUTPUT_NAMES.items()}
    for job in _submit_ants_split(_InLine(), res, paths).values():  # written in line, one after the other
        job.result()
    write_image(d / "fixed.nii.gz", f, fa)
    write_image(d / "moving.nii.gz", m, ma)
    # UniReg's own resampling through the whole map (what warped.nii.gz holds)
    mt = torch.from_numpy(m[None])
    warped = pull(mt, ma, fs, fa, world_map=lambda x, rows: mapping.forward(x))[0].numpy()
    back = pull(torch.from_numpy(f[None]), fa, ms, ma, world_map=lambda y, rows: mapping.inverse(y))[0].numpy()
    deform_mm = np.abs(np.einsum("ij,j...->i...", w_aff[:3, :3], disp[0].numpy())).max()
    return SimpleNamespace(d=d, paths=paths, warped=warped, back=back, t=t, deform_mm=deform_mm, f=f, res=res)


def test_affine_mat_round_trip_and_antspyx_reads_it(case):
    assert np.allclose(read_affine(case.paths["affine"]), case.t, atol=1e-9)
    tx = ants.read_transform(str(case.paths["affine"]))
    p = np.array([10.0, -20.0, 7.0])
    q = np.array(tx.apply_to_point((p * [-1, -1, 1]).tolist())) * [-1, -1, 1]  # ANTs points are LPS
    assert np.allclose(q, case.t[:3, :3] @ p + case.t[:3, 3], atol=1e-4)


def test_ants_chain_reproduces_warped(case):
    assert case.deform_mm >= 3.0
    fixed = ants.image_read(str(case.d / "fixed.nii.gz"))
    moving = ants.image_read(str(case.d / "moving.nii.gz"))
    out = ants.apply_transforms(
        fixed,
        moving,
        transformlist=[str(case.paths["deformable_warp"]), str(case.paths["affine"])],
        interpolator="linear",
    ).numpy()
    mask = case.warped > 0.05
    assert _corr(out, case.warped, mask) > 0.99
    # and the affine alone is clearly not enough: the deformable part matters
    aff_only = ants.apply_transforms(fixed, moving, transformlist=[str(case.paths["affine"])]).numpy()
    assert _corr(aff_only, case.warped, mask) < _corr(out, case.warped, mask) - 0.01


def test_ants_inverse_chain_reproduces_inverse(case):
    fixed = ants.image_read(str(case.d / "fixed.nii.gz"))
    moving = ants.image_read(str(case.d / "moving.nii.gz"))
    out = ants.apply_transforms(
        moving,
        fixed,
        transformlist=[str(case.paths["affine"]), str(case.paths["deformable_inverse_warp"])],
        whichtoinvert=[True, False],
        interpolator="linear",
    ).numpy()
    mask = case.back > 0.05
    assert _corr(out, case.back, mask) > 0.99


def test_write_affine_2d_round_trip(tmp_path):
    t = np.eye(4)
    t[:2, :2] = [[0.98, 0.1], [-0.1, 1.02]]
    t[:2, 3] = [3.0, -4.0]
    write_affine(tmp_path / "a.txt", t, ndim=2)
    assert np.allclose(read_affine(tmp_path / "a.txt", ndim=2), t, atol=1e-9)


def _cli(*args):
    from typer.testing import CliRunner

    from unireg.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _apply_forward_chain(case, out, *extra):
    """`unireg apply MOVING -t deformable_warp -t affine.mat --ref FIXED --out OUT [extra]` (the ANTs order)."""
    d, p = case.d, case.paths
    return _cli(
        "apply",
        d / "moving.nii.gz",
        "-t",
        p["deformable_warp"],
        "-t",
        p["affine"],
        "--ref",
        d / "fixed.nii.gz",
        "--out",
        out,
        *extra,
    )


def test_apply_chain_like_ants_apply_transforms(case, tmp_path):
    """`unireg apply -t A -t B` follows antsApplyTransforms' order, forward and inverse."""
    from unireg.io.image import read_image

    d, p = case.d, case.paths
    r = _apply_forward_chain(case, tmp_path / "w.nii.gz")
    assert r.exit_code == 0, r.output
    ours = read_image(tmp_path / "w.nii.gz").data[0]
    mask = case.warped > 0.05
    assert _corr(ours, case.warped, mask) > 0.999
    r = _cli(
        "apply",
        d / "fixed.nii.gz",
        "-t",
        f"[{p['affine']},1]",
        "-t",
        p["deformable_inverse_warp"],
        "--ref",
        d / "moving.nii.gz",
        "--out",
        tmp_path / "b.nii.gz",
    )
    assert r.exit_code == 0, r.output
    assert _corr(read_image(tmp_path / "b.nii.gz").data[0], case.back, case.back > 0.05) > 0.999


@pytest.mark.parametrize("ours,theirs,bar", [("bspline", "bSpline", 0.995), ("nearest", "nearestNeighbor", 0.99)])
def test_apply_interpolation_matches_ants(case, tmp_path, ours, theirs, bar):
    from unireg.io.image import read_image

    d, p = case.d, case.paths
    r = _apply_forward_chain(case, tmp_path / "w.nii.gz", "--interpolation", ours)
    assert r.exit_code == 0, r.output
    fixed = ants.image_read(str(d / "fixed.nii.gz"))
    moving = ants.image_read(str(d / "moving.nii.gz"))
    ref = ants.apply_transforms(
        fixed, moving, transformlist=[str(p["deformable_warp"]), str(p["affine"])], interpolator=theirs
    ).numpy()
    got = read_image(tmp_path / "w.nii.gz").data[0]
    mask = ref > 0.05
    assert _corr(got, ref, mask) > bar
    if ours == "nearest":  # nearest: the very same voxel values almost everywhere
        assert np.mean(np.isclose(got[mask], ref[mask], atol=1e-5)) > 0.97


def test_deformable_forward_is_computed_from_the_whole_map(case):
    """deformable_warp = T^-1(x + warp(x)) - x from the whole map's field: the same as resampling the
    deformable part itself (to float32 precision)."""
    from unireg.outputs import deformable_forward_mm

    res = case.res
    direct = displacement_on_grid(
        lambda x: res.mapping._through(x, res.mapping.disp_vox), res.fixed.spatial_shape, res.fixed.affine
    )
    got = deformable_forward_mm(res)
    assert np.abs(direct).max() > 3.0
    assert np.abs(got - direct).max() < 1e-3
