"""The coordinate-frame conventions of unireg.spatial.frames, against hand-computed numbers."""

import numpy as np
import pytest

from unireg.spatial import frames

# voxel axis 0 -> world y (3 mm), axis 1 -> world -x (2 mm), axis 2 -> world z (0.5 mm)
A = np.array([[0.0, -2.0, 0.0, 10.0],
              [3.0, 0.0, 0.0, -5.0],
              [0.0, 0.0, 0.5, 1.0],
              [0.0, 0.0, 0.0, 1.0]])


def test_voxel_to_world_by_hand():
    # x = -2*2 + 10 = 6, y = 3*1 - 5 = -2, z = 0.5*4 + 1 = 3
    assert np.allclose(frames.voxel_to_world(np.array([[1.0, 2.0, 4.0]]), A), [[6.0, -2.0, 3.0]])
    assert np.allclose(frames.world_to_voxel(np.array([[6.0, -2.0, 3.0]]), A), [[1.0, 2.0, 4.0]])


def test_two_d_uses_rows_and_columns_0_1_3():
    a = np.diag([0.5, 2.0, 1.0, 1.0])
    a[:2, 3] = [3.0, 4.0]
    assert np.allclose(frames.affine_nd(a, 2), [[0.5, 0, 3], [0, 2.0, 4], [0, 0, 1]])
    assert np.allclose(frames.voxel_to_world(np.array([[2.0, 1.0]]), a), [[4.0, 6.0]])
    assert np.allclose(frames.embed_nd(frames.affine_nd(a, 2), 2), a)


def test_spacing_is_column_norms():
    assert np.allclose(frames.spacing(A, 3), [3.0, 2.0, 0.5])
    assert np.allclose(frames.spacing(A, 2), [3.0, 2.0])


def test_ras_lps_flip_x_and_y_only():
    assert np.allclose(frames.ras_to_lps(np.array([1.0, 2.0, 3.0])), [-1.0, -2.0, 3.0])
    assert np.allclose(frames.lps_to_ras(np.array([[1.0, 2.0]])), [[-1.0, -2.0]])
    field = np.ones((3, 2, 2))
    lps = frames.ras_to_lps(field, axis=0)
    assert np.all(lps[0] == -1) and np.all(lps[1] == -1) and np.all(lps[2] == 1)
    assert np.all(field == 1)  # input untouched


def test_affine_ras_to_lps_by_hand():
    a = np.eye(4)
    a[:3, 3] = [10.0, 20.0, 30.0]
    expected = np.array([[-1, 0, 0, -10], [0, -1, 0, -20], [0, 0, 1, 30], [0, 0, 0, 1.0]])
    assert np.allclose(frames.affine_ras_to_lps(a), expected)
    assert np.allclose(frames.affine_lps_to_ras(expected), a)


def test_world_displacement_to_voxels_by_hand():
    # A d = (-2 d1, 3 d0, 0.5 d2) = (-4, 3, 1)  ->  d = (1, 2, 2)
    world = np.array([-4.0, 3.0, 1.0]).reshape(3, 1, 1, 1)
    vox = frames.disp_world_to_vox(world, A)
    assert np.allclose(vox[:, 0, 0, 0], [1.0, 2.0, 2.0])
    assert np.allclose(frames.disp_vox_to_world(vox, A), world)


def test_oblique_2d_plane_projects_world_displacement():
    """Least squares, not the in-plane 2x2 inverse: the plane is tilted 30 deg about world x, a world
    displacement along y (z = 0, as a 2-D field carries none) moves cos^2(30) = 0.75 voxels in-plane."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    a = np.eye(4)
    a[:3, 1] = [0.0, c, s]
    a[:3, 2] = [0.0, -s, c]
    vox = frames.disp_world_to_vox(np.array([0.0, c]).reshape(2, 1, 1), a)
    assert vox[:, 0, 0] == pytest.approx([0.0, 0.75], abs=1e-6)
