"""A coronal slice stored as a 3-D file, (X, 1, Z): registered in its plane, its outputs lie on the fixed file's grid
and ITK (SimpleITK) and `unireg apply` reproduce warped.nii.gz from the moving file with them (unireg.io.slices)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unireg.cli.main import app
from unireg.io.image import write_image

from ..synthetic_pairs import grid_affine, overlap_mask, phantom, rotation, tiny_registrar

sitk = pytest.importorskip("SimpleITK")
torch.set_num_threads(1)
SHIFT = np.array([2.0, 0.0, -1.5])  # the moving object, moved in the plane (world mm)
ACROSS = 3.0  # the moving slice's plane lies 3 mm further along y (beyond half its 2 mm thickness)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    d = tmp_path_factory.mktemp("slices")
    fs, ms = (44, 1, 40), (42, 1, 38)
    fa = grid_affine(fs, (1.5, 2.0, 1.5), rotation(1, 8), [0.0, 1.0, 0.0])  # turned about the normal, y
    ma = grid_affine(ms, (1.4, 2.0, 1.6), np.eye(3), [0.0, 1.0 + ACROSS, 0.0])
    f, _ = phantom(fs, fa, np.zeros(3))
    m, mlab = phantom(ms, ma, np.zeros(3), shift=SHIFT)
    write_image(d / "f.nii.gz", f, fa)
    write_image(d / "m.nii.gz", m, ma)
    write_image(d / "mlab.nii.gz", mlab.astype(np.uint8), ma)
    tiny_registrar(2, 1.5).save(d / "tiny.pt")
    r = _cli("register", d / "f.nii.gz", d / "m.nii.gz", "--labels", d / "mlab.nii.gz", "--model", d / "tiny.pt",
             "--refine", 2, "--out", d / "o", "--outputs", "warped,warp,inverse,ants,jacobian,labels", "-q")
    assert r.exit_code in (0, 3), r.output
    return d, fs, fa, ms, ma


def test_outputs_lie_on_the_fixed_files_grid(done):
    d, fs, fa, ms, ma = done
    for name in ("warped", "jacobian", "warped_labels"):
        img = nib.load(str(d / "o" / f"{name}.nii.gz"))
        assert img.shape == fs, name
        np.testing.assert_allclose(img.affine, fa, atol=1e-5)
    for name in ("warp", "deformable_warp", "deformable_inverse_warp"):
        assert nib.load(str(d / "o" / f"{name}.nii.gz")).shape == (*fs, 1, 3), name
    inv = nib.load(str(d / "o" / "inverse_warp.nii.gz"))
    assert inv.shape == (*ms, 1, 3)
    np.testing.assert_allclose(inv.affine, ma, atol=1e-5)


def test_the_registration_finds_the_in_plane_shift_and_reports_the_world_map(done):
    d = done[0]
    rep = json.loads((d / "o" / "report.json").read_text())
    plane = rep["slice_plane"]  # the step between the two planes, along their normal (either sign of it)
    np.testing.assert_allclose(np.multiply(plane["across_mm"], plane["normal"]), [0.0, ACROSS, 0.0], atol=1e-6)
    t = np.asarray(rep["affine_matrix"])  # fixed world -> moving world, the plane's normal untouched
    np.testing.assert_allclose(t[:3, 1], [0.0, 1.0, 0.0], atol=1e-9)
    assert t[1, 3] == pytest.approx(ACROSS)
    assert abs(t[0, 3] - SHIFT[0]) < 0.75 and abs(t[2, 3] - SHIFT[2]) < 0.75, t


def test_itk_and_unireg_apply_reproduce_the_warped_slice(done):
    d, fs, fa, ms, ma = done
    o = d / "o"
    f = sitk.ReadImage(str(d / "f.nii.gz"), sitk.sitkFloat32)
    m = sitk.ReadImage(str(d / "m.nii.gz"), sitk.sitkFloat32)
    warped = nib.load(str(o / "warped.nii.gz")).get_fdata()

    def itk(tx):  # sitk arrays are (z, y, x): back to the file's (x, y, z)
        return sitk.GetArrayFromImage(sitk.Resample(m, f, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)

    whole = sitk.DisplacementFieldTransform(sitk.ReadImage(str(o / "warp.nii.gz"), sitk.sitkVectorFloat64))
    split = sitk.CompositeTransform([
        sitk.ReadTransform(str(o / "affine.mat")),
        sitk.DisplacementFieldTransform(sitk.ReadImage(str(o / "deformable_warp.nii.gz"), sitk.sitkVectorFloat64)),
    ])
    a, b, warped = itk(whole)[:, 0], itk(split)[:, 0], warped[:, 0]  # the slice's two long axes
    inside = overlap_mask(a, warped, erode=1)
    assert inside.sum() > 0.5 * inside.size
    np.testing.assert_allclose(a[inside], warped[inside], atol=2e-4)
    np.testing.assert_allclose(b[inside], warped[inside], atol=2e-4)
    for args in (["apply", o / "warp.nii.gz", d / "m.nii.gz"],
                 ["apply", "-t", o / "deformable_warp.nii.gz", "-t", o / "affine.mat", d / "m.nii.gz"]):
        out = d / f"applied{len(args)}.nii.gz"
        r = _cli(*args, "-r", d / "f.nii.gz", "-o", out)
        assert r.exit_code == 0, r.output
        img = nib.load(str(out))
        assert img.shape == fs
        np.testing.assert_allclose(img.affine, fa, atol=1e-5)
        np.testing.assert_allclose(img.get_fdata()[:, 0], warped, atol=1e-4)


def test_antspyx_applies_the_warp_and_the_split_to_the_moving_slice(done):
    ants = pytest.importorskip("ants")
    d, o = done[0], done[0] / "o"
    f, m = ants.image_read(str(d / "f.nii.gz")), ants.image_read(str(d / "m.nii.gz"))
    warped = nib.load(str(o / "warped.nii.gz")).get_fdata()[:, 0]
    for chain in ([o / "warp.nii.gz"], [o / "deformable_warp.nii.gz", o / "affine.mat"]):
        a = ants.apply_transforms(f, m, transformlist=[str(t) for t in chain]).numpy()[:, 0]
        inside = overlap_mask(a, warped, erode=1)
        assert inside.sum() > 0.5 * inside.size
        np.testing.assert_allclose(a[inside], warped[inside], atol=2e-4)


def test_a_slice_of_another_orientation_is_refused_in_one_line(done, tmp_path):
    d, fs, fa, ms, ma = done
    axial = np.asarray(nib.load(str(d / "m.nii.gz")).dataobj)[:, 0, :]
    write_image(tmp_path / "axial.nii.gz", axial, np.eye(4))  # (X, Z) pixels in the x-y plane
    r = _cli("register", d / "f.nii.gz", tmp_path / "axial.nii.gz", "--model", d / "tiny.pt", "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "axial.nii.gz: moving image is not in the fixed image's plane" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_an_initial_transform_in_world_coordinates_is_read_in_the_slices_plane(done, tmp_path):
    from unireg.io.transform import write_affine

    d = done[0]
    t = np.eye(4)
    t[:3, :3] = rotation(1, 5)  # turned about the planes' normal, y: an in-plane turn
    t[:3, 3] = [1.5, 0.0, -2.0]
    write_affine(tmp_path / "init.mat", t)
    r = _cli("register", d / "f.nii.gz", d / "m.nii.gz", "--model", d / "tiny.pt", "--refine", 0, "--no-affine",
             "--initial-transform", tmp_path / "init.mat", "--out", tmp_path / "o", "--outputs", "ants", "-q")
    assert r.exit_code in (0, 3), r.output
    got = np.asarray(json.loads((tmp_path / "o" / "report.json").read_text())["affine_matrix"])
    want = t.copy()
    want[1, 3] = ACROSS  # across, the step between the two slices' planes
    np.testing.assert_allclose(got, want, atol=1e-9)
