"""to_working_grid: Gaussian anti-aliasing exactly when (and along the axes where) the grid coarsens."""

import numpy as np
import torch

from unireg.preprocess import to_working_grid
from unireg.spatial.world import pull, working_grid


def _noise(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _plain(data, affine, shape, w):
    return pull(torch.from_numpy(data)[None], affine, shape, w)


def test_coarsening_is_smoothed_first():
    data = _noise((64, 64))
    a = np.eye(4)
    shape, w = working_grid(data.shape, a, 4.0)
    out = to_working_grid(data, a, np.array([1.0, 1.0]), shape, w)
    plain = _plain(data, a, shape, w)
    assert out.shape == (1, *shape) and out.dtype == torch.float32
    # sigma = 0.5 * (4 / 1 - 1) = 1.5 voxels: white noise loses most of its variance, the mean stays
    assert out.std() < 0.5 * plain.std()  # measured 0.35; 1.0 without smoothing
    assert abs(out.mean().item() - float(data.mean())) < 0.02


def test_same_spacing_is_not_smoothed():
    data = _noise((20, 24))
    a = np.eye(4)
    shape, w = working_grid(data.shape, a, 1.0)
    assert torch.equal(to_working_grid(data, a, np.array([1.0, 1.0]), shape, w), _plain(data, a, shape, w))


def test_only_coarsened_axes_are_smoothed():
    """Input 1 mm x 4 mm onto a 4 mm grid: axis 0 smoothed, axis 1 not.  An image constant along
    axis 0 is therefore unchanged by the smoothing."""
    row = _noise((1, 16))
    data = np.repeat(row, 64, axis=0)
    a = np.diag([1.0, 4.0, 1.0, 1.0])
    shape, w = working_grid(data.shape, a, 4.0)
    out = to_working_grid(data, a, np.array([1.0, 4.0]), shape, w)
    assert torch.allclose(out, _plain(data, a, shape, w), atol=1e-5)



def _block(shape, lo, hi):
    """A bright block (an inner brighter core) in air: the object spans ``lo..hi-1`` per axis."""
    img = torch.zeros(shape)
    img[tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))] = 0.6
    img[tuple(slice(a + (b - a) // 3, b - (b - a) // 3) for a, b in zip(lo, hi, strict=False))] = 1.0
    return img


def test_object_box_is_the_object_plus_the_margin_clipped_to_the_grid():
    from unireg.preprocess import object_box

    box = object_box(_block((60, 50, 40), (22, 12, 17), (39, 29, 34)), 3)
    assert [(b.start, b.stop) for b in box] == [(19, 42), (9, 32), (14, 37)]
    near_edge = object_box(_block((60, 50, 40), (1, 12, 17), (18, 29, 34)), 3)
    assert near_edge[0] == slice(0, 21)  # clipped at the grid's first voxel


def test_object_box_ignores_stray_background_noise_but_not_a_user_mask():
    from unireg.preprocess import object_box

    img = _block((60, 50, 40), (22, 17, 12), (39, 34, 29))
    img[2, 2, 2] = img[57, 47, 37] = 1.0  # two bright stray voxels in the corners (a ghost, a spike)
    assert [(b.start, b.stop) for b in object_box(img, 2)] == [(20, 41), (15, 36), (10, 31)]
    mask = torch.zeros(img.shape, dtype=torch.bool)
    mask[10:50, 5:45, 5:35] = True
    assert [(b.start, b.stop) for b in object_box(img, 2, mask=mask)] == [(8, 52), (3, 47), (3, 37)]


def test_object_box_declines_when_the_object_fills_the_grid():
    from unireg.preprocess import object_box

    assert object_box(_block((40, 40, 40), (1, 1, 1), (39, 39, 39)), 2) is None  # saving < 10 %
    assert object_box(torch.zeros(20, 20, 20), 2) is None  # nothing above the threshold
