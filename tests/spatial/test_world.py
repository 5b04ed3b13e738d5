import numpy as np
import torch

from unireg.spatial.world import affine_nd, embed_nd, pull, working_grid


def _oblique_affine():
    rx = np.deg2rad(20.0)
    rz = np.deg2rad(-15.0)
    Rx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    Rz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = Rz @ Rx @ np.diag([1.0, 1.5, 2.5])
    a[:3, 3] = [-30.0, 12.0, 5.0]
    return a


def test_voxel_world_round_trip():
    a = _oblique_affine()
    p = np.random.default_rng(0).uniform(0, 20, size=(10, 3))
    w = p @ a[:3, :3].T + a[:3, 3]
    back = (w - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T
    assert np.allclose(back, p)
    assert np.allclose(embed_nd(affine_nd(a, 3), 3), a)
    a2 = np.diag([0.5, 2.0, 1.0, 1.0])
    a2[:2, 3] = [3, 4]
    assert np.allclose(affine_nd(a2, 2), [[0.5, 0, 3], [0, 2.0, 4], [0, 0, 1]])


def test_working_grid_covers_fov_and_is_world_aligned():
    a = _oblique_affine()
    shape, w = working_grid((20, 16, 12), a, 2.0)
    assert np.allclose(w[:3, :3], np.eye(3) * 2.0)
    corners = np.array(np.meshgrid([0, 19], [0, 15], [0, 11], indexing="ij")).reshape(3, -1).T
    world = corners @ a[:3, :3].T + a[:3, 3]
    vox = (world - w[:3, 3]) / 2.0
    assert vox.min() > -1.01 and np.all(vox.max(0) < np.array(shape) - 1 + 1.01)


def test_pull_identity_and_chunking():
    a = _oblique_affine()
    img = torch.rand(1, 9, 8, 7)
    same = pull(img, a, (9, 8, 7), a, chunk_voxels=50)
    assert torch.allclose(same, img, atol=1e-5)


def test_pull_world_translation():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    img = torch.rand(1, 10, 10, 10)
    b = a.copy()
    b[0, 3] = 4.0  # output grid shifted by +4 mm = 2 voxels along axis 0
    out = pull(img, a, (8, 10, 10), b)
    assert torch.allclose(out, img[:, 2:10], atol=1e-5)
