from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unireg.errors import UniRegError
from unireg.io.atomic import atomic_path, check_output_dir
from unireg.io.image import Image, read_image, same_grid, write_image

LPS = np.diag([-1.0, -1.0, 1.0])


def oblique(spacing=(1.0, 1.5, 2.5), origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    a, b = np.radians(20), np.radians(-15)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def vol(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def raises(path, match):
    """Expect a one-line UniRegError that names ``path``."""
    ctx = pytest.raises(UniRegError, match=match)

    class _Check:
        def __enter__(self):
            self.info = ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = ctx.__exit__(*exc)
            err = self.info.value
            assert err.path == str(path) and str(path) in str(err) and "\n" not in str(err)
            return out

    return _Check()


# ------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz", "a.mha", "a.nrrd"])
def test_roundtrip_3d(tmp_path, name):
    data, aff = vol(), oblique()
    write_image(tmp_path / name, data[None], aff)
    img = read_image(tmp_path / name)
    assert isinstance(img, Image) and img.data.shape == (1, 6, 5, 4) and img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data[0], data)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_allclose(img.spacing, [1.0, 1.5, 2.5], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


def test_nifti_header_and_gzip(tmp_path):
    aff = oblique()
    write_image(tmp_path / "a.nii.gz", vol(), aff)
    hdr = nib.load(str(tmp_path / "a.nii.gz")).header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)
    np.testing.assert_allclose(hdr.get_sform(), aff, atol=1e-6)
    with gzip.open(tmp_path / "a.nii.gz") as f:  # a standard gzip stream
        assert len(f.read()) > 348


def test_itk_formats_agree_with_nifti(tmp_path):
    """The same image written as NIfTI and as MHA has the same geometry in ITK (LPS) terms."""
    aff = oblique()
    write_image(tmp_path / "a.nii.gz", vol(), aff)
    write_image(tmp_path / "a.mha", vol(), aff)
    a, b = (sitk.ReadImage(str(tmp_path / n)) for n in ("a.nii.gz", "a.mha"))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    idx = (2, 3, 1)
    p_ras = aff[:3, :3] @ np.array(idx) + aff[:3, 3]
    np.testing.assert_allclose(b.TransformIndexToPhysicalPoint(idx), LPS @ p_ras, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b).transpose(2, 1, 0), vol())


def test_read_itk_written_mha(tmp_path):
    """A file written by SimpleITK directly: voxel (i, j, k) maps to its LPS point, flipped to RAS."""
    arr = vol((4, 5, 6))  # SimpleITK array order (z, y, x)
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing((0.5, 2.0, 3.0))
    im.SetOrigin((1.0, 2.0, 3.0))
    c, s = np.cos(0.3), np.sin(0.3)
    im.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    sitk.WriteImage(im, str(tmp_path / "b.nrrd"))
    img = read_image(tmp_path / "b.nrrd")
    assert img.data.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(img.data[0], arr.transpose(2, 1, 0))
    for idx in [(0, 0, 0), (5, 1, 2), (3, 4, 3)]:
        p_ras = img.affine[:3, :3] @ np.array(idx) + img.affine[:3, 3]
        np.testing.assert_allclose(LPS @ p_ras, im.TransformIndexToPhysicalPoint(idx), atol=1e-6)


def test_nifti_2d_and_singletons(tmp_path):
    d2 = vol((7, 5))
    nib.save(nib.Nifti1Image(d2, np.eye(4)), str(tmp_path / "a.nii"))
    nib.save(nib.Nifti1Image(d2[:, :, None], np.eye(4)), str(tmp_path / "b.nii"))
    nib.save(nib.Nifti1Image(vol()[..., None], oblique()), str(tmp_path / "c.nii.gz"))
    assert read_image(tmp_path / "a.nii").data.shape == (1, 7, 5)
    assert read_image(tmp_path / "b.nii").data.shape == (1, 7, 5)
    assert read_image(tmp_path / "c.nii.gz").data.shape == (1, 6, 5, 4)
    write_image(tmp_path / "d.nii.gz", d2[None], np.eye(4))
    assert nib.load(str(tmp_path / "d.nii.gz")).shape == (7, 5)
    img = read_image(tmp_path / "d.nii.gz")
    assert img.ndim == 2 and np.array_equal(img.data[0], d2)


def test_2d_mha_roundtrip(tmp_path):
    aff = np.eye(4)
    c, s = np.cos(0.4), np.sin(0.4)
    aff[:2, :2] = np.array([[c, -s], [s, c]]) @ np.diag([0.7, 1.3])
    aff[:2, 3] = [4.0, -2.0]
    d2 = vol((7, 5))
    write_image(tmp_path / "a.mha", d2, aff)
    assert sitk.ReadImage(str(tmp_path / "a.mha")).GetDimension() == 2
    img = read_image(tmp_path / "a.mha")
    np.testing.assert_array_equal(img.data[0], d2)
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    # a 2-D image whose plane is not z = 0 is kept exactly as a single-slice 3-D file
    write_image(tmp_path / "b.mha", d2, oblique())
    img = read_image(tmp_path / "b.mha")
    assert img.data.shape == (1, 7, 5)
    np.testing.assert_allclose(img.affine, oblique(), atol=1e-6)


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(12 * 9).reshape(12, 9) % 251).astype(np.uint8)  # (H, W)
    im = sitk.GetImageFromArray(grey)
    sitk.WriteImage(im, str(tmp_path / "g.png"))
    img = read_image(tmp_path / "g.png")
    assert img.data.shape == (1, 12, 9) and img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data[0], grey)
    for r, c in [(0, 0), (11, 0), (3, 8)]:
        p_ras = img.affine[:3, :2] @ [r, c] + img.affine[:3, 3]
        np.testing.assert_allclose(LPS @ p_ras, [*im.TransformIndexToPhysicalPoint((c, r)), 0.0], atol=1e-6)
    assert abs(np.linalg.det(img.affine[:3, :3])) > 0

    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    img = read_image(tmp_path / "c.png")
    expect = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(img.data[0], expect, atol=1e-3)
    with raises(tmp_path / "c.png", "single-channel"):
        read_image(tmp_path / "c.png", labels=True)


def test_tif_spacing(tmp_path):
    im = sitk.GetImageFromArray(vol((8, 6)))
    im.SetSpacing((0.5, 0.25))
    sitk.WriteImage(im, str(tmp_path / "a.tif"))
    img = read_image(tmp_path / "a.tif")
    assert img.data.shape == (1, 8, 6)
    np.testing.assert_allclose(sorted(img.spacing), [0.25, 0.5], atol=1e-4)


def test_labels(tmp_path):
    lab = np.zeros((5, 5, 5), np.int16)
    lab[1:3, 1:4, 2] = 3
    write_image(tmp_path / "l.nii.gz", lab, np.eye(4))
    img = read_image(tmp_path / "l.nii.gz", labels=True)
    assert img.data.dtype == np.int16 and np.array_equal(img.data[0], lab)
    write_image(tmp_path / "f.nii.gz", lab.astype(np.float32), np.eye(4))
    img = read_image(tmp_path / "f.nii.gz", labels=True)
    assert img.data.dtype == np.int32 and np.array_equal(img.data[0], lab)
    write_image(tmp_path / "h.nii.gz", lab + 0.5, np.eye(4))
    with raises(tmp_path / "h.nii.gz", "non-integer"):
        read_image(tmp_path / "h.nii.gz", labels=True)
    write_image(tmp_path / "z.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with raises(tmp_path / "z.nii.gz", "no non-zero label"):
        read_image(tmp_path / "z.nii.gz", labels=True)
    # a constant label map is fine (one label), a constant image is not
    write_image(tmp_path / "o.nii.gz", np.ones((4, 4, 4), np.uint8), np.eye(4))
    assert read_image(tmp_path / "o.nii.gz", labels=True).data.dtype == np.uint8


def test_same_grid():
    a = Image(np.zeros((1, 4, 5, 6)), oblique())
    b = Image(np.ones((1, 4, 5, 6)), oblique() + 1e-6)
    assert same_grid(a, b)
    assert not same_grid(a, Image(np.zeros((1, 4, 5, 7)), oblique()))
    assert not same_grid(a, Image(np.zeros((1, 4, 5, 6)), oblique(origin=(10.0, -20.0, 5.1))))
    c2 = np.eye(4)
    c2[2, 2] = 3.0  # the normal column of a 2-D image does not matter
    assert same_grid(Image(np.zeros((1, 4, 5)), np.eye(4)), Image(np.zeros((1, 4, 5)), c2))


def test_write_dtypes_and_errors(tmp_path):
    write_image(tmp_path / "a.nii", vol().astype(np.float64), np.eye(4))
    assert nib.load(str(tmp_path / "a.nii")).get_data_dtype() == np.float32
    write_image(tmp_path / "b.nii", vol() > 0.5, np.eye(4))
    assert nib.load(str(tmp_path / "b.nii")).get_data_dtype() == np.uint8
    write_image(tmp_path / "c.nii", vol(), np.eye(4), dtype=np.int16)
    assert nib.load(str(tmp_path / "c.nii")).get_data_dtype() == np.int16
    with raises(tmp_path / "x.png", "cannot write"):
        write_image(tmp_path / "x.png", vol(), np.eye(4))
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.nii", np.zeros((2, 4, 4, 4)), np.eye(4))
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ errors
def test_missing_and_unknown(tmp_path):
    with raises(tmp_path / "none.nii.gz", "file not found"):
        read_image(tmp_path / "none.nii.gz")
    (tmp_path / "a.txt").write_text("hello")
    with raises(tmp_path / "a.txt", "unknown image extension '.txt'"):
        read_image(tmp_path / "a.txt")


def test_corrupt_files(tmp_path):
    write_image(tmp_path / "good.nii.gz", vol((20, 20, 20)), np.eye(4))
    raw = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with raises(tmp_path / "trunc.nii.gz", "cannot read"):
        read_image(tmp_path / "trunc.nii.gz")
    (tmp_path / "text.nii").write_text("this is not a NIfTI file\n")
    with raises(tmp_path / "text.nii", "cannot read"):
        read_image(tmp_path / "text.nii")
    (tmp_path / "text.mha").write_text("garbage\n")
    with raises(tmp_path / "text.mha", "cannot read"):
        read_image(tmp_path / "text.mha")
    (tmp_path / "text.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with raises(tmp_path / "text.png", "cannot read"):
        read_image(tmp_path / "text.png")


@pytest.mark.parametrize("ext", [".mgz", ".mgh"])
def test_freesurfer_volumes(tmp_path, ext):
    """FreeSurfer MGH/MGZ volumes are read as nibabel reads them (voxel order, voxel-to-RAS matrix), images
    and label maps (an aseg's int32 labels) alike; truncated ones are refused with the file named."""
    aff = oblique(spacing=(1.0, 1.0, 1.0))
    img, lab = vol((9, 8, 7)), (np.arange(9 * 8 * 7).reshape(9, 8, 7) % 5).astype(np.int32)
    for name, arr in (("t1", img), ("aseg", lab)):
        nib.save(nib.MGHImage(arr, aff), str(tmp_path / f"{name}{ext}"))
    got = read_image(tmp_path / f"t1{ext}")
    assert np.array_equal(got.data[0], img) and np.allclose(got.affine, aff, atol=1e-5)
    assert got.meta["format"] == "mgh"
    labels = read_image(tmp_path / f"aseg{ext}", labels=True)
    assert np.array_equal(labels.data[0], lab) and labels.data.dtype.kind == "i"
    assert labels.data.dtype.isnative  # MGH stores big-endian; torch.from_numpy refuses that byte order
    raw = (tmp_path / f"t1{ext}").read_bytes()
    (tmp_path / f"trunc{ext}").write_bytes(raw[: len(raw) // 2])
    with raises(tmp_path / f"trunc{ext}", "cannot read FreeSurfer MGH file"):
        read_image(tmp_path / f"trunc{ext}")


def test_4d_and_vector(tmp_path):
    nib.save(nib.Nifti1Image(vol((4, 4, 4, 2)), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with raises(tmp_path / "t.nii.gz", "4-D image with 2 volumes; give one 3-D volume"):
        read_image(tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(vol((4, 4, 4, 1, 3)), np.eye(4)), str(tmp_path / "v.nii.gz"))
    with raises(tmp_path / "v.nii.gz", "vector image with 3 components"):
        read_image(tmp_path / "v.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(vol((4, 4, 4, 3)), isVector=True), str(tmp_path / "v.mha"))
    with raises(tmp_path / "v.mha", "vector image with 3 components"):
        read_image(tmp_path / "v.mha")


def test_bad_values(tmp_path):
    d = vol()
    d[0, 0, 0] = np.nan
    d[1, 0, 0] = np.inf
    write_image(tmp_path / "nan.nii.gz", d, np.eye(4))
    with raises(tmp_path / "nan.nii.gz", "2 of 120 voxels are NaN or Inf"):
        read_image(tmp_path / "nan.nii.gz")
    write_image(tmp_path / "const.nii.gz", np.full((4, 4, 4), 7.0), np.eye(4))
    with raises(tmp_path / "const.nii.gz", "constant"):
        read_image(tmp_path / "const.nii.gz")


def test_singular_affine(tmp_path):
    aff = oblique()
    aff[:3, 2] = aff[:3, 0]  # two parallel columns
    write_image(tmp_path / "s.nii.gz", vol(), aff)
    with raises(tmp_path / "s.nii.gz", "degenerate"):
        read_image(tmp_path / "s.nii.gz")


# ------------------------------------------------------------------------------------------ atomic
def test_atomic_path(tmp_path):
    final = tmp_path / "out.warp.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith(".warp.nii.gz")
        tmp.write_bytes(b"new")
        assert not final.exists()
    assert final.read_bytes() == b"new" and list(tmp_path.iterdir()) == [final]
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert final.read_bytes() == b"new" and list(tmp_path.iterdir()) == [final]


def test_check_output_dir(tmp_path):
    out = check_output_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    assert check_output_dir(out) == out  # existing is fine
    (tmp_path / "file").write_text("x")
    with raises(tmp_path / "file", "is a file"):
        check_output_dir(tmp_path / "file")
    with raises(tmp_path / "file" / "sub", "cannot create"):
        check_output_dir(tmp_path / "file" / "sub")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_check_output_dir_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with raises(ro, "not writable"):
            check_output_dir(ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("kind", ["nifti1", "nifti2"])
def test_gzipped_nifti_read_by_isal_equals_nibabel(tmp_path, kind):
    """The ISA-L reader (``_read_nifti_gz_isal``) gives nibabel's own values and affine, scaling included."""
    import nibabel as nib

    from unireg.io.image import _read_nifti_gz_isal

    x = (np.random.default_rng(1).random((12, 9, 7)) * 100).astype(np.int16)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    aff[:3, 3] = [5, 6, 7]
    img = (nib.Nifti1Image if kind == "nifti1" else nib.Nifti2Image)(x, aff)
    img.header.set_slope_inter(0.5, 3)
    nib.save(img, tmp_path / "a.nii.gz")
    got = _read_nifti_gz_isal(tmp_path / "a.nii.gz")
    assert got is not None
    ref = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(got[0], np.asanyarray(ref.dataobj))
    np.testing.assert_array_equal(got[1], ref.affine)
    assert read_image(tmp_path / "a.nii.gz").data.shape == (1, 12, 9, 7)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_nifti_voxel_order_whatever_the_memory_layout(tmp_path, layout):
    """The file holds the same bytes whichever layout the array has in memory (the writer copies it
    to NIfTI's first-axis-fastest order itself), and nibabel reads back the same voxels."""
    from unireg.io.image import fortran_order

    rng = np.random.default_rng(3)
    base = rng.random((7, 5, 4)).astype(np.float32)
    strided = np.moveaxis(np.ascontiguousarray(np.moveaxis(base, 0, -1)), -1, 0)  # neither C nor F
    arr = {"C": base, "F": np.asfortranarray(base), "strided": strided}[layout]
    f = fortran_order(arr)
    assert f.flags.f_contiguous and np.array_equal(f, base)
    p = write_image(tmp_path / "x.nii.gz", arr, np.eye(4))
    ref = tmp_path / "ref.nii"
    nib.save(nib.Nifti1Image(base, np.eye(4)), ref)  # nibabel's own writer, from the plain C array
    img = nib.load(p)
    assert np.array_equal(np.asarray(img.dataobj), base)
    n = base.nbytes  # the voxel block ends either file
    assert gzip.decompress(p.read_bytes())[-n:] == ref.read_bytes()[-n:]
