"""The 2-D mosaic sampler agrees with ATen's 3-D grid_sample (values, both paddings, both batch layouts)."""

import pytest
import torch
import torch.nn.functional as F

from unireg.spatial.grid import exp_velocity, linear_resize, sample
from unireg.spatial.mosaic import SliceMosaic, exp_velocity_values


def _points(n, shape, margin=3.0, gen=None):
    """Coordinates well inside, on the border and up to ``margin`` voxels outside the grid."""
    size = torch.tensor(shape, dtype=torch.float32).view(1, 3, 1, 1, 1)
    u = torch.rand((n, 3, 5, 6, 7), generator=gen)
    return u * (size - 1 + 2 * margin) - margin


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (9, 8, 7), (23, 31, 19)])
def test_one_volume_many_point_sets_matches_grid_sample(shape, padding):
    gen = torch.Generator().manual_seed(0)
    vol = torch.rand((1, 2) + shape, generator=gen)
    pts = _points(4, shape, gen=gen)
    # integer coordinates (voxel centres, the last slice/row/column) are hit exactly too
    pts[0, :, 0, 0, :3] = torch.tensor([[0.0, shape[0] - 1, 1.0], [shape[1] - 1, 0.0, 1.0], [0.0, 1.0, shape[2] - 1]])
    got = SliceMosaic(vol).sample(pts, padding)
    want = sample(vol.expand(4, -1, -1, -1, -1), pts, padding_mode=padding)
    assert got.shape == want.shape == (4, 2, 5, 6, 7)
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_batched_volumes_each_sampled_by_their_own_points(padding):
    gen = torch.Generator().manual_seed(1)
    vol = torch.rand((3, 3, 6, 7, 5), generator=gen)
    pts = _points(3, (6, 7, 5), gen=gen)
    got = SliceMosaic(vol).sample(pts, padding)
    assert torch.allclose(got, sample(vol, pts, padding_mode=padding), atol=2e-5)
    with pytest.raises(ValueError, match="voxel coordinates"):
        SliceMosaic(vol).sample(pts[:2])


def test_rejects_what_it_cannot_sample():
    with pytest.raises(ValueError, match="volume"):
        SliceMosaic(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="padding_mode"):
        SliceMosaic(torch.rand(1, 1, 4, 4, 4)).sample(torch.zeros(1, 3, 2, 2, 2), "reflection")


def test_far_outside_reads_zero_not_a_neighbouring_tile():
    vol = torch.ones(1, 1, 4, 5, 6)
    pts = torch.tensor([[-1.0, 2, 2], [4, 2, 2], [2, -3, 2], [2, 9, 2], [2, 2, -7], [2, 2, 6], [-2, -2, -2]])
    got = SliceMosaic(vol).sample(pts.T.reshape(1, 3, 1, 1, 7))
    assert torch.equal(got, torch.zeros_like(got))


def test_exp_velocity_values_matches_the_squarings_of_grid():
    gen = torch.Generator().manual_seed(2)
    v = F.interpolate(
        torch.randn(2, 3, 4, 4, 4, generator=gen) * 3, size=(12, 13, 11), mode="trilinear", align_corners=True
    )
    assert torch.allclose(exp_velocity_values(v, 5), exp_velocity(v, 5), atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 3, 5, 6), (11, 3)),
        ((2, 3, 3, 13, 4), (24, 24, 7)),
        ((1, 1, 1, 4, 4), (3, 4, 4)),
        ((1, 2, 5, 5, 5), (5, 5, 5)),
    ],
)
def test_linear_resize_is_align_corners_interpolation(shape, size):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    mode = "bilinear" if len(size) == 2 else "trilinear"
    want = F.interpolate(x, size=size, mode=mode, align_corners=True)
    assert torch.allclose(linear_resize(x, size), want, atol=1e-5)
