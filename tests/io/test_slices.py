"""Single slices stored as 3-D files (unireg.io.slices): read in their plane's frame, written back as they came."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from unireg.errors import UniRegError
from unireg.io import slices
from unireg.io.image import Image, read_image

from ..synthetic_pairs import rotation


def _affine(rot: np.ndarray, spacing=(1.5, 2.0, 1.2), origin=(-30.0, 12.0, 7.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _ramp(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 1.0


@pytest.mark.parametrize("axis", [0, 1])
def test_a_slice_one_voxel_thick_along_another_axis_reads_as_2d_in_its_plane(tmp_path, axis):
    shape = [9, 7, 6]
    shape[axis] = 1
    arr = _ramp(shape)
    aff = _affine(rotation(2, 20) @ rotation(0, 10))
    nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "s.nii.gz"))
    img = read_image(tmp_path / "s.nii.gz")
    assert img.ndim == 2
    np.testing.assert_array_equal(img.data[0], np.squeeze(arr, axis))
    lay = slices.layout_of(img)
    assert lay is not None and lay.axis == axis and lay.shape == tuple(shape)
    # every voxel keeps its world position: the frame is the world turned by R, nothing else
    keep = [k for k in range(3) if k != axis]
    for idx2 in [(0, 0), (3, 2), (8 if axis else 6, 5)]:
        idx2 = (min(idx2[0], img.data.shape[1] - 1), min(idx2[1], img.data.shape[2] - 1))
        idx3 = np.zeros(3)
        idx3[keep] = idx2
        world = aff[:3, :3] @ idx3 + aff[:3, 3]
        frame = img.affine[:3, :3] @ np.array([*idx2, 0.0]) + img.affine[:3, 3]
        np.testing.assert_allclose(lay.rotation.T @ frame, world, atol=1e-9)
    # the in-plane columns lie in the frame's x-y plane: the 2-D pipeline's reading of them is exact
    np.testing.assert_allclose(img.affine[2, :2], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(lay.rotation), 1.0)
    # ... and the image goes back to its file exactly
    back, a = lay.image_out(img.data)
    np.testing.assert_array_equal(back, arr[None])  # with its channel axis, as write_image takes it
    np.testing.assert_array_equal(a, nib.load(str(tmp_path / "s.nii.gz")).affine)


def test_axial_slices_keep_the_x_y_reading_and_a_slice_far_from_axial_does_not(tmp_path):
    arr = _ramp((8, 6, 1))
    for deg, turned in [(0, False), (30, False), (44, False), (46, True), (90, True)]:
        nib.save(nib.Nifti1Image(arr, _affine(rotation(0, deg))), str(tmp_path / "a.nii"))
        img = read_image(tmp_path / "a.nii")
        assert img.ndim == 2 and (slices.layout_of(img) is not None) == turned, deg
        if not turned:  # exactly as before: the file's own affine
            np.testing.assert_array_equal(img.affine, nib.load(str(tmp_path / "a.nii")).affine)


def test_parallel_slices_share_the_frame_whatever_their_in_plane_orientation():
    coronal = rotation(0, 90)  # voxel axis 1 along world z: (X, Y, 1) holding a coronal plane
    a = slices.to_plane(_ramp((8, 6)), _affine(coronal))
    b = slices.to_plane(_ramp((8, 6)), _affine(coronal @ rotation(2, 25), origin=(3.0, -40.0, 2.0)))
    assert a is not None and b is not None
    np.testing.assert_allclose(a[2].rotation, b[2].rotation, atol=1e-12)
    # the in-plane turn between them survives, for the registration to find (25 degrees about the normal)
    c0a, c0b = a[1][:2, 0], b[1][:2, 0]
    ang = np.degrees(np.arctan2(c0a[0] * c0b[1] - c0a[1] * c0b[0], c0a @ c0b))
    assert abs(abs(ang) - 25.0) < 1e-6
    # the plane's normal goes to +z; an axial plane is not turned at all
    np.testing.assert_allclose(a[2].rotation @ a[2].rotation[2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_array_equal(slices.plane_rotation([1.0, 0, 0], [0, 1.0, 0]), np.eye(3))
    np.testing.assert_array_equal(slices.plane_rotation([0, 1.0, 0], [1.0, 0, 0]), np.eye(3))  # either side


def test_fields_and_matrices_go_out_to_world_and_back():
    aff = _affine(rotation(1, 15) @ rotation(0, 90))
    got = slices.to_plane(_ramp((5, 4, 1)), aff)
    assert got is not None
    _, flat, lay = got
    rng = np.random.default_rng(0)
    d2 = rng.normal(size=(2, 5, 4)).astype(np.float32)
    d3, a = lay.field_out(d2, across=2.5)
    assert d3.shape == (3, 5, 4, 1) and np.array_equal(a, aff)
    # world vectors: the in-plane ones turned back, plus 2.5 mm along the normal
    normal = lay.rotation[2]
    np.testing.assert_allclose(np.einsum("c...,c->...", d3, normal), 2.5, atol=1e-5)
    back = slices.field_to_plane(d3, aff)
    assert back is not None
    np.testing.assert_allclose(back[0], d2, atol=1e-5)
    np.testing.assert_allclose(back[1], flat, atol=1e-12)
    # a 2-D affine of the frame -> the 3-D world transform (the jump across) -> the frame again
    t2 = np.array([[0.98, -0.17, 3.0], [0.17, 0.98, -2.0], [0.0, 0.0, 1.0]])
    zf = flat[2, 3]  # the slice's plane in its frame; the other slice's lies 2.5 mm further, parallel
    t4 = slices.matrix_out(t2, lay, slices.PlanePair(np.zeros(2), zf, np.zeros(2), zf + 2.5))
    p = aff[:3, :3] @ [2.0, 1.0, 0.0] + aff[:3, 3]  # a point of the slice
    q_frame = lay.rotation @ (t4[:3, :3] @ p + t4[:3, 3])
    p_frame = lay.rotation @ p
    np.testing.assert_allclose(q_frame[:2], t2[:2, :2] @ p_frame[:2] + t2[:2, 2], atol=1e-9)
    np.testing.assert_allclose(q_frame[2] - p_frame[2], 2.5, atol=1e-9)
    inplane = slices.matrix_to_plane(t4, lay)
    np.testing.assert_allclose(inplane[np.ix_([0, 1, 3], [0, 1, 3])], t2, atol=1e-12)


def test_two_slices_in_planes_that_cross_are_refused_naming_the_moving_file(tmp_path):
    got = slices.to_plane(_ramp((8, 1, 6)), np.eye(4))
    assert got is not None
    coronal = Image(got[0][None], got[1], "c.nii.gz", {"slice_layout": got[2]})
    axial = Image(_ramp((1, 8, 6)), np.eye(4), "a.nii.gz")
    with pytest.raises(UniRegError, match=r"^a\.nii\.gz: moving image is not in the fixed image's plane .*normal "
                                          r"\(0\.00, -?1\.00, 0\.00\): 90 degrees apart, over 30\)"):
        slices.in_fixed_plane(coronal, axial)
    assert slices.in_fixed_plane(coronal, coronal) is coronal
    assert slices.in_fixed_plane(axial, axial) is axial


def test_a_slice_tilted_from_the_fixed_one_is_seen_in_its_plane_and_the_maps_land_on_it():
    fixed = _slice_image(_affine(rotation(0, 90), origin=(0.0, 5.0, 0.0)), (9, 7))  # coronal, (X, Z)
    tilted = _slice_image(_affine(rotation(0, 90) @ rotation(0, 12), origin=(1.0, 9.0, -2.0)), (8, 6))
    moving = slices.in_fixed_plane(fixed, tilted)
    lay = slices.layout_of(moving)
    np.testing.assert_array_equal(lay.rotation, slices.layout_of(fixed).rotation)  # the fixed slice's frame
    np.testing.assert_array_equal(moving.data, tilted.data)
    # every voxel keeps its world position in the new frame
    w = lambda img, ij: slices.layout_of(img).rotation.T @ (img.affine[:3, :3] @ [*ij, 0.0] + img.affine[:3, 3])
    np.testing.assert_allclose(w(moving, (3, 2)), w(tilted, (3, 2)), atol=1e-9)
    planes = slices.PlanePair.of(fixed, moving)
    assert planes is not None and planes.tilt_deg() == pytest.approx(12.0)
    # a displacement field on the fixed grid, stepped across: each fixed voxel goes onto the moving plane
    rng = np.random.default_rng(1)
    u = rng.normal(size=(2, 9, 7))
    d3, _ = slices.layout_of(fixed).field_out(u, planes.forward(fixed, u))
    p = np.einsum("cd,d...->c...", slices.layout_of(fixed).affine[:3, [0, 2]], np.indices((9, 7))).reshape(3, -1).T
    q = p + slices.layout_of(fixed).affine[:3, 3] + d3[:, :, 0].reshape(3, -1).T
    a_m = slices.layout_of(moving).affine
    n_m = np.cross(a_m[:3, 0], a_m[:3, 2])
    np.testing.assert_allclose((q - a_m[:3, 3]) @ (n_m / np.linalg.norm(n_m)), 0.0, atol=1e-4)
    with pytest.raises(UniRegError, match="60 degrees apart"):
        slices.in_fixed_plane(fixed, _slice_image(_affine(rotation(0, 90) @ rotation(0, 60)), (8, 6)))


def _slice_image(affine: np.ndarray, shape2) -> Image:
    """A coronal-style (X, 1, Z) slice with ``affine`` as read_image reads it."""
    got = slices.to_plane(_ramp((shape2[0], 1, shape2[1])), affine)
    assert got is not None
    return Image(got[0][None], got[1], "s.nii.gz", {"slice_layout": got[2]})


def test_the_frame_shows_coronal_and_sagittal_slices_upright():
    # rows of R: the frame's x ("right") and y ("up") axes in world coordinates
    coronal = slices.plane_rotation([-1.0, 0, 0], [0, 0, 2.0])  # voxel axes whatever their sense
    np.testing.assert_allclose(coronal[:2], [[1, 0, 0], [0, 0, 1]], atol=1e-12)
    sagittal = slices.plane_rotation([0, 0, 1.0], [0, -1.0, 0])
    np.testing.assert_allclose(sagittal[:2], [[0, 1, 0], [0, 0, 1]], atol=1e-12)
    tilted = rotation(0, 60)  # an axial plane tipped 60 degrees about x: up is still superior, right still +x
    r = slices.plane_rotation(tilted[:, 0], tilted[:, 1])
    assert r[1, 2] > 0.45 and r[0, 0] > 0.99
