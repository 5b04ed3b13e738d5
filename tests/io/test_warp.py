"""Warp files are checked against ITK itself: SimpleITK must read what we write and, applying it,
land on the same points and the same resampled image as an independent numpy computation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from unireg.errors import UniRegError
from unireg.io.image import write_image
from unireg.io.warp import read_displacement_field, write_displacement_field

from ..spies import spy_on

LPS = np.diag([-1.0, -1.0, 1.0])


def rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine(spacing, origin, angles=((0, 20.0), (2, 20.0))) -> np.ndarray:
    r = np.eye(3)
    for axis, deg in angles:
        r = rot(axis, deg) @ r
    a = np.eye(4)
    a[:3, :3] = r @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def voxel_world(affine: np.ndarray, shape) -> np.ndarray:
    """World RAS coordinates ``(3, *shape)`` of every voxel (2-D grids use z = 0 voxel index)."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    idx3 = np.concatenate([idx, np.zeros((3 - len(shape), *shape))]) if len(shape) < 3 else idx
    return np.einsum("ij,j...->i...", affine[:3, :3], idx3) + affine[:3, 3].reshape(3, *[1] * len(shape))


def smooth_disp(world: np.ndarray, ndim: int) -> np.ndarray:
    """A smooth, non-trivial displacement (RAS mm) of world position, a few mm in size."""
    x, y, z = world
    u = np.stack([3.0 * np.sin(y / 9.0) + 0.5, -2.0 * np.cos(z / 7.0 + x / 20.0), 1.5 * np.sin(x / 8.0)])
    return u[:ndim].astype(np.float32)


FIX_SHAPE = (20, 18, 14)
FIX_AFFINE = oblique_affine((1.0, 1.5, 2.5), (-12.0, 6.0, -9.0))


@pytest.fixture(scope="module")
def field3d(tmp_path_factory):
    path = tmp_path_factory.mktemp("warp") / "fixed_to_moving.warp.nii.gz"
    disp = smooth_disp(voxel_world(FIX_AFFINE, FIX_SHAPE), 3)
    write_displacement_field(path, disp, FIX_AFFINE)
    return path, disp


def itk_transform(path) -> sitk.Transform:
    return sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))


def test_file_layout(field3d):
    path, _ = field3d
    img = nib.load(str(path))
    assert img.shape == (*FIX_SHAPE, 1, 3)
    assert img.get_data_dtype() == np.float32
    assert int(img.header["intent_code"]) == 1007
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.affine, FIX_AFFINE, atol=1e-5)


def test_itk_reads_geometry(field3d):
    path, _ = field3d
    im = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    assert im.GetSize() == FIX_SHAPE and im.GetNumberOfComponentsPerPixel() == 3
    lps = LPS @ FIX_AFFINE[:3, :3]
    np.testing.assert_allclose(im.GetSpacing(), np.linalg.norm(lps, axis=0), atol=1e-5)
    np.testing.assert_allclose(np.reshape(im.GetDirection(), (3, 3)), lps / np.linalg.norm(lps, axis=0), atol=1e-5)
    np.testing.assert_allclose(im.GetOrigin(), LPS @ FIX_AFFINE[:3, 3], atol=1e-5)


def test_itk_transform_point_on_grid(field3d):
    """At voxel centres, ITK's p + u(p) (LPS) equals our analytic RAS displacement, converted."""
    path, disp = field3d
    tx = itk_transform(path)
    rng = np.random.default_rng(0)
    for _ in range(10):
        v = np.array([rng.integers(1, n - 1) for n in FIX_SHAPE], dtype=np.float64)
        p_ras = FIX_AFFINE[:3, :3] @ v + FIX_AFFINE[:3, 3]
        u_ras = smooth_disp(p_ras.reshape(3, 1), 3)[:, 0]
        got_lps = np.array(tx.TransformPoint(tuple(LPS @ p_ras)))
        np.testing.assert_allclose(got_lps, LPS @ (p_ras + u_ras), atol=1e-3)
        assert np.linalg.norm(u_ras) > 0.1  # the check is not vacuous


def test_itk_transform_point_off_grid(field3d):
    """Between voxels ITK interpolates linearly: compare with map_coordinates(order=1) of our field."""
    path, disp = field3d
    tx = itk_transform(path)
    rng = np.random.default_rng(1)
    for _ in range(10):
        v = np.array([rng.uniform(1, n - 2) for n in FIX_SHAPE])
        p_ras = FIX_AFFINE[:3, :3] @ v + FIX_AFFINE[:3, 3]
        u_ras = np.array([map_coordinates(disp[c].astype(np.float64), v.reshape(3, 1), order=1)[0] for c in range(3)])
        got_lps = np.array(tx.TransformPoint(tuple(LPS @ p_ras)))
        np.testing.assert_allclose(got_lps, LPS @ (p_ras + u_ras), atol=1e-3)


def test_itk_resample_matches_numpy(field3d, tmp_path):
    """sitk.Resample(moving, fixed, warp) == moving sampled at A_m^-1 (x + u(x)) for fixed voxels x."""
    path, disp = field3d
    mov_shape = (30, 26, 24)
    mov_affine = oblique_affine((1.2, 1.0, 1.8), (0.0, 0.0, 0.0), angles=((1, -15.0), (0, 10.0)))
    # centre the (larger) moving field of view on the fixed one, then shift it a little
    centre = FIX_AFFINE[:3, :3] @ ((np.array(FIX_SHAPE) - 1) / 2) + FIX_AFFINE[:3, 3]
    mov_affine[:3, 3] = centre - mov_affine[:3, :3] @ ((np.array(mov_shape) - 1) / 2) + [1.5, -2.0, 1.0]
    w = voxel_world(mov_affine, mov_shape)
    moving = (np.sin(w[0] / 6.0) * np.cos(w[1] / 8.0) + 0.3 * np.sin(w[2] / 5.0)).astype(np.float32)
    write_image(tmp_path / "moving.nii.gz", moving, mov_affine)
    write_image(tmp_path / "fixed.nii.gz", np.ones(FIX_SHAPE, np.float32), FIX_AFFINE)

    mov_itk = sitk.ReadImage(str(tmp_path / "moving.nii.gz"), sitk.sitkFloat64)
    fix_itk = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"), sitk.sitkFloat64)
    warped = sitk.GetArrayFromImage(sitk.Resample(mov_itk, fix_itk, itk_transform(path), sitk.sitkLinear, 0.0))
    warped = warped.transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)

    x = voxel_world(FIX_AFFINE, FIX_SHAPE)
    y = x + disp
    inv = np.linalg.inv(mov_affine)
    vox = np.einsum("ij,j...->i...", inv[:3, :3], y) + inv[:3, 3].reshape(3, 1, 1, 1)
    ours = map_coordinates(moving.astype(np.float64), vox, order=1, mode="constant", cval=0.0)

    inside = np.all([(vox[i] > 0.5) & (vox[i] < n - 1.5) for i, n in enumerate(mov_shape)], axis=0)
    assert inside.mean() > 0.8
    assert np.abs(warped - ours)[inside].max() < 1e-4
    # and the warp changes the result a lot, so a sign or axis error could not pass
    ident = map_coordinates(moving.astype(np.float64), vox - np.einsum("ij,j...->i...", inv[:3, :3], disp), order=1)
    assert np.abs(ident - ours)[inside].max() > 0.3


def test_2d_itk(tmp_path):
    shape = (16, 12)
    affine = np.eye(4)
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    affine[:2, :2] = np.array([[c, -s], [s, c]]) @ np.diag([1.2, 0.8])
    affine[:3, 3] = [5.0, -3.0, 0.0]
    disp = smooth_disp(voxel_world(affine, shape), 2)
    path = tmp_path / "w2d.nii.gz"
    write_displacement_field(path, disp, affine)
    assert nib.load(str(path)).shape == (*shape, 1, 1, 2)

    im = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    assert im.GetDimension() == 2 and im.GetSize() == shape
    tx = sitk.DisplacementFieldTransform(im)
    rng = np.random.default_rng(2)
    for _ in range(8):
        v = np.array([rng.uniform(1, n - 2) for n in shape])
        p = affine[:2, :2] @ v + affine[:2, 3]
        u = np.array([map_coordinates(disp[k].astype(np.float64), v.reshape(2, 1), order=1)[0] for k in range(2)])
        got_lps = np.array(tx.TransformPoint(tuple(-p)))
        np.testing.assert_allclose(got_lps, -(p + u), atol=1e-3)

    back, aff = read_displacement_field(path)
    np.testing.assert_array_equal(back, disp)
    np.testing.assert_allclose(aff, affine, atol=1e-6)


@pytest.mark.parametrize("name", ["w.nii", "w.nii.gz"])
def test_roundtrip(tmp_path, name, field3d):
    _, disp = field3d
    write_displacement_field(tmp_path / name, disp, FIX_AFFINE)
    back, aff = read_displacement_field(tmp_path / name)
    assert back.dtype == np.float32 and back.shape == disp.shape
    np.testing.assert_array_equal(back, disp)
    np.testing.assert_allclose(aff, FIX_AFFINE, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_gzipped_field_is_read_by_isal_as_nibabel_reads_it(tmp_path, field3d, monkeypatch):
    """A ``.nii.gz`` field goes through the ISA-L stream (as images do) and gives nibabel's values,
    scaling included; a field nibabel wrote itself (another writer, scl_slope set) too."""
    import unireg.io.image as image_io
    import unireg.io.warp as warp_io

    calls = spy_on(monkeypatch, warp_io, "_read_nifti_gz_isal", lambda p: p.name, real=image_io._read_nifti_gz_isal)
    path, disp = field3d
    back, aff = read_displacement_field(path)
    assert calls == [path.name]
    np.testing.assert_array_equal(back, disp)
    np.testing.assert_allclose(aff, FIX_AFFINE, atol=1e-6)
    # written by nibabel with a scale factor: the reader applies it, as nibabel's own does
    lps = np.moveaxis(disp, 0, -1)[:, :, :, None, :] * np.array([-1, -1, 1], np.float32)
    img = nib.Nifti1Image((lps / 0.5).astype(np.int16), FIX_AFFINE)
    img.header.set_intent(1007)
    img.header.set_slope_inter(0.5, 0.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    want = np.moveaxis(np.asarray(nib.load(str(tmp_path / "scaled.nii.gz")).dataobj, np.float32)[:, :, :, 0, :]
                       * np.array([-1, -1, 1], np.float32), -1, 0)
    got, _ = read_displacement_field(tmp_path / "scaled.nii.gz")
    assert calls[-1] == "scaled.nii.gz" and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_errors(tmp_path):
    with pytest.raises(UniRegError, match="file not found"):
        read_displacement_field(tmp_path / "nope.nii.gz")
    scalar = tmp_path / "scalar.nii.gz"
    write_image(scalar, np.random.rand(4, 5, 6), np.eye(4))
    with pytest.raises(UniRegError, match="not a displacement field") as e:
        read_displacement_field(scalar)
    assert "scalar.nii.gz" in str(e.value) and "\n" not in str(e.value)
    no_intent = tmp_path / "nointent.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1, 3), np.float32), np.eye(4)), str(no_intent))
    with pytest.raises(UniRegError, match="intent code is 0"):
        read_displacement_field(no_intent)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(UniRegError, match="cannot read"):
        read_displacement_field(bad)
    with pytest.raises(UniRegError, match="NIfTI"):
        write_displacement_field(tmp_path / "w.mha", np.zeros((3, 4, 5, 6)), np.eye(4))
    with pytest.raises(ValueError):
        write_displacement_field(tmp_path / "w.nii", np.zeros((3, 4, 5)), np.eye(4))
