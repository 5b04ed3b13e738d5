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


