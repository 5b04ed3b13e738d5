import numpy as np
import torch

from unireg.spatial.world import field_on_grid, fill_by_slabs, pull, warp_points, working_grid


def _oblique_affine():
    rx = np.deg2rad(20.0)
    rz = np.deg2rad(-15.0)
    Rx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    Rz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = Rz @ Rx @ np.diag([1.0, 1.5, 2.5])
    a[:3, 3] = [-30.0, 12.0, 5.0]
    return a


def test_warp_points_by_hand():
    """x -> x + u(x) with u sampled at the point's voxel position (world field, 2 mm grid)."""
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = [-4.0, 0.0, 10.0]
    disp = np.zeros((3, 5, 5, 5), np.float32)
    disp[0] = np.arange(5, dtype=np.float32)[:, None, None]  # u_x = voxel index along axis 0
    # world (-1, 2, 12) is voxel (1.5, 1, 1): u = (1.5, 0, 0)
    assert np.allclose(warp_points(disp, a, np.array([[-1.0, 2.0, 12.0]])), [[0.5, 2.0, 12.0]])


def test_field_on_grid_carries_world_values():
    a = np.diag([1.0, 1.0, 1.0, 1.0])
    disp = np.zeros((3, 6, 6, 6), np.float32)
    disp[1] = np.arange(6, dtype=np.float32)[:, None, None]
    b = np.diag([2.0, 1.0, 1.0, 1.0])  # every other voxel along axis 0
    out = field_on_grid(disp, a, (3, 6, 6), b)
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([0.0, 2.0, 4.0]))
    assert torch.equal(field_on_grid(disp, a, (6, 6, 6), a), torch.from_numpy(disp))


def test_working_grid_covers_fov_and_is_world_aligned():
    a = _oblique_affine()
    shape, w = working_grid((20, 16, 12), a, 2.0)
    assert np.allclose(w[:3, :3], np.eye(3) * 2.0)
    corners = np.array(np.meshgrid([0, 19], [0, 15], [0, 11], indexing="ij")).reshape(3, -1).T
    world = corners @ a[:3, :3].T + a[:3, 3]
    vox = (world - w[:3, 3]) / 2.0
    assert vox.min() > -1.01 and np.all(vox.max(0) < np.array(shape) - 1 + 1.01)


def test_pull_is_the_same_for_any_slab_size():
    """An oblique resampling (no identity shortcut) done in 1-row slabs, ragged slabs and one slab."""
    a = _oblique_affine()
    img = torch.rand(1, 9, 8, 7)
    shape, w = working_grid((9, 8, 7), a, 1.5)
    whole = pull(img, a, shape, w, chunk_voxels=10**9)
    assert whole.abs().sum() > 0
    for chunk in (1, 50, 3 * shape[1] * shape[2] + 5):
        assert torch.equal(pull(img, a, shape, w, chunk_voxels=chunk), whole)


def test_pull_shift_in_small_slabs_by_hand():
    a = np.eye(4)
    b = np.eye(4)
    b[0, 3] = 1.0  # output voxel i sits on input voxel i + 1
    img = torch.arange(6 * 4 * 3, dtype=torch.float32).reshape(1, 6, 4, 3)
    out = pull(img, a, (5, 4, 3), b, chunk_voxels=12)  # one row of 12 voxels per slab
    assert torch.allclose(out, img[:, 1:], atol=1e-4)


def test_pull_world_translation():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    img = torch.rand(1, 10, 10, 10)
    b = a.copy()
    b[0, 3] = 4.0  # output grid shifted by +4 mm = 2 voxels along axis 0
    out = pull(img, a, (8, 10, 10), b)
    assert torch.allclose(out, img[:, 2:10], atol=1e-5)


def test_slab_size_keeps_cpu_slabs_small_and_gpu_slabs_within_the_budget():
    from unireg.spatial.world import GPU_SLAB_FLOATS, slab_size

    assert slab_size("cpu", 16, 2_000_000) == 2_000_000
    assert slab_size(None, 16, 2_000_000) == 2_000_000
    assert slab_size("cuda", 16, 2_000_000) == GPU_SLAB_FLOATS // 16  # a device object: no GPU needed
    assert slab_size("cuda:0", 10**9, 1_000_000) == 1_000_000  # never below the CPU's slab


def test_fill_by_slabs_gives_each_voxel_its_own_values_for_any_slab_size():
    """Every slab gets its own voxel coordinates and its values land in its own rows: a function of
    the coordinates, filled in slabs of 1, 7 or all rows, equals it evaluated on the whole grid."""
    shape = (9, 5, 4)
    whole = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))

    def f(v):
        return torch.stack([v[0] * 100 + v[1] * 10 + v[2], v[0] - v[2]])

    expected = f(whole).numpy()
    for chunk in (20, 7 * 20, 10_000):  # one row, seven rows, the whole grid per slab
        out = fill_by_slabs(shape, 2, f, chunk)
        assert out.dtype == np.float32 and out.shape == (2, *shape)
        np.testing.assert_array_equal(out, expected)
