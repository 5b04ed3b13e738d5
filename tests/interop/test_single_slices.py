"""A coronal slice stored as a 3-D file, (X, 1, Z): registered in its plane, its outputs lie on the fixed file's grid
and ITK (SimpleITK) and `unireg apply` reproduce warped.nii.gz from the moving file with them (unireg.io.slices)."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
ACROSS = 3.0  # the moving slice's plane lies 3 mm further along the normal (beyond half its 2 mm thickness)
# per pair: the one-voxel axis (also the fixed normal's world axis), the in-plane shift of the moving object (mm),
# the moving slice's tilt (degrees about world x: its plane meets the fixed one's, 4 mm apart at the edges)
ORIENTATIONS = {
    "coronal": (1, np.array([2.0, 0.0, -1.5]), 0.0),
    "sagittal": (0, np.array([0.0, 2.0, -1.5]), 0.0),
    "coronal_tilted": (1, np.array([2.0, 0.0, -1.5]), 8.0),
}


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _on(shape, k: int, n: int = 1) -> tuple[int, ...]:
    s = list(shape)
    s.insert(k, n)
    return tuple(s)


@pytest.fixture(scope="module", params=sorted(ORIENTATIONS))
def done(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    k, shift, tilt = ORIENTATIONS[request.param]
    normal = np.eye(3)[k]
    fs, ms = _on((44, 40), k), _on((42, 38), k)
    fa = grid_affine(fs, _on((1.5, 1.5), k, 2), rotation(k, 8), normal)  # turned about the normal
    ma = grid_affine(ms, _on((1.4, 1.6), k, 2), rotation(0, tilt), normal * (1.0 + ACROSS))
    f, _ = phantom(fs, fa, np.zeros(3))
    m, mlab = phantom(ms, ma, np.zeros(3), shift=shift)
    write_image(d / "f.nii.gz", f[None], fa)  # (C, *spatial): a (1, Y, Z) volume is not a 2-D image
    write_image(d / "m.nii.gz", m[None], ma)
    write_image(d / "mlab.nii.gz", mlab.astype(np.uint8)[None], ma)
    tiny_registrar(2, 1.5).save(d / "tiny.pt")
    r = _cli("register", d / "f.nii.gz", d / "m.nii.gz", "--labels", d / "mlab.nii.gz", "--model", d / "tiny.pt",
             "--refine", 2, "--out", d / "o", "--outputs", "warped,warp,inverse,ants,jacobian,labels", "-q")
    assert r.exit_code in (0, 3), r.output
    return SimpleNamespace(d=d, k=k, shift=shift, normal=normal, tilt=tilt, fs=fs, fa=fa, ms=ms, ma=ma)


def _flat(x: np.ndarray, k: int) -> np.ndarray:
    """A slice file's array without its one-voxel axis."""
    return np.take(x, 0, axis=k)


def test_outputs_lie_on_the_fixed_files_grid(done):
    d, fs, fa, ms, ma = done.d, done.fs, done.fa, done.ms, done.ma
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
    rep = json.loads((done.d / "o" / "report.json").read_text())
    plane = rep["slice_plane"]  # the step between the two planes, along their normal (either sign of it)
    np.testing.assert_allclose(np.multiply(plane["across_mm"], plane["normal"]), done.normal * ACROSS, atol=1e-6)
    assert plane["tilt_deg"] == pytest.approx(done.tilt, abs=1e-6)
    t = np.asarray(rep["affine_matrix"])  # fixed world -> moving world: the fixed slice onto the moving one
    inplane = [i for i in range(3) if i != done.k]
    assert np.abs(t[inplane, 3] - done.shift[inplane]).max() < 0.75, t
    # every point of the fixed slice lands on the moving slice's plane
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in done.fs], indexing="ij"), -1).reshape(-1, 3)
    p = idx @ done.fa[:3, :3].T + done.fa[:3, 3]
    q = p @ t[:3, :3].T + t[:3, 3]
    n_m = np.cross(*[done.ma[:3, i] for i in range(3) if i != done.k])
    np.testing.assert_allclose((q - done.ma[:3, 3]) @ (n_m / np.linalg.norm(n_m)), 0.0, atol=1e-6)
    if done.tilt == 0:  # parallel planes: nothing but the step across
        np.testing.assert_allclose(t[:3, done.k], done.normal, atol=1e-9)
        assert t[done.k, 3] == pytest.approx(ACROSS)


def test_itk_and_unireg_apply_reproduce_the_warped_slice(done):
    d, o, k = done.d, done.d / "o", done.k
    f = sitk.ReadImage(str(d / "f.nii.gz"), sitk.sitkFloat32)
    m = sitk.ReadImage(str(d / "m.nii.gz"), sitk.sitkFloat32)
    warped = _flat(nib.load(str(o / "warped.nii.gz")).get_fdata(), k)

    def itk(tx):  # sitk arrays are (z, y, x): back to the file's (x, y, z), then the slice's two long axes
        return _flat(sitk.GetArrayFromImage(sitk.Resample(m, f, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0), k)

    whole = sitk.DisplacementFieldTransform(sitk.ReadImage(str(o / "warp.nii.gz"), sitk.sitkVectorFloat64))
    split = sitk.CompositeTransform([
        sitk.ReadTransform(str(o / "affine.mat")),
        sitk.DisplacementFieldTransform(sitk.ReadImage(str(o / "deformable_warp.nii.gz"), sitk.sitkVectorFloat64)),
    ])
    a, b = itk(whole), itk(split)
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
        assert img.shape == done.fs
        np.testing.assert_allclose(img.affine, done.fa, atol=1e-5)
        np.testing.assert_allclose(_flat(img.get_fdata(), k), warped, atol=1e-4)


def test_antspyx_applies_the_warp_and_the_split_to_the_moving_slice(done):
    ants = pytest.importorskip("ants")
    d, o, k = done.d, done.d / "o", done.k
    f, m = ants.image_read(str(d / "f.nii.gz")), ants.image_read(str(d / "m.nii.gz"))
    warped = _flat(nib.load(str(o / "warped.nii.gz")).get_fdata(), k)
    for chain in ([o / "warp.nii.gz"], [o / "deformable_warp.nii.gz", o / "affine.mat"]):
        a = _flat(ants.apply_transforms(f, m, transformlist=[str(t) for t in chain]).numpy(), k)
        inside = overlap_mask(a, warped, erode=1)
        assert inside.sum() > 0.5 * inside.size
        np.testing.assert_allclose(a[inside], warped[inside], atol=2e-4)


def test_a_slice_of_another_orientation_is_refused_in_one_line(done, tmp_path):
    d = done.d
    axial = _flat(np.asarray(nib.load(str(d / "m.nii.gz")).dataobj), done.k)
    write_image(tmp_path / "axial.nii.gz", axial, np.eye(4))  # the same pixels in the x-y plane
    r = _cli("register", d / "f.nii.gz", tmp_path / "axial.nii.gz", "--model", d / "tiny.pt", "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "axial.nii.gz: moving image is not in the fixed image's plane" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_an_initial_transform_in_world_coordinates_is_read_in_the_slices_plane(done, tmp_path):
    from unireg.io.transform import write_affine

    d = done.d
    if done.tilt:
        pytest.skip("the planes meet: the report's map is the initial one composed with the step onto the moving plane")
    t = np.eye(4)
    t[:3, :3] = rotation(done.k, 5)  # turned about the planes' normal: an in-plane turn
    t[:3, 3] = np.where(done.normal > 0, 0.0, [1.5, 1.5, -2.0])
    write_affine(tmp_path / "init.mat", t)
    r = _cli("register", d / "f.nii.gz", d / "m.nii.gz", "--model", d / "tiny.pt", "--refine", 0, "--no-affine",
             "--initial-transform", tmp_path / "init.mat", "--out", tmp_path / "o", "--outputs", "ants", "-q")
    assert r.exit_code in (0, 3), r.output
    got = np.asarray(json.loads((tmp_path / "o" / "report.json").read_text())["affine_matrix"])
    want = t.copy()
    want[done.k, 3] = ACROSS  # across, the step between the two slices' planes
    np.testing.assert_allclose(got, want, atol=1e-9)
