"""The torch Gaussian is scipy's ``gaussian_filter(mode="nearest")``: same kernel, same border."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unireg.spatial.smooth import gaussian_filter, gaussian_kernel1d


@pytest.mark.parametrize(
    "shape, sigma",
    [((23, 31, 17), (0.5, 0.5, 0.5)), ((20, 25, 15), (1.5, 0.0, 0.7)), ((32, 35), (2.3, 0.4)), ((5, 6, 7), (3.0,) * 3)],
)
def test_gaussian_filter_matches_scipy(shape, sigma):
    x = np.random.default_rng(0).random(shape).astype(np.float32) * 100
    want = ndimage.gaussian_filter(x, sigma=sigma, mode="nearest", truncate=2.5)
    got = gaussian_filter(torch.from_numpy(x), sigma, truncate=2.5)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)


def test_gaussian_filter_keeps_a_constant_and_its_input():
    x = torch.full((6, 7, 8), 3.0)
    y = gaussian_filter(x, (1.0, 2.0, 0.0))
    assert torch.allclose(y, x) and y.data_ptr() != x.data_ptr()
    assert torch.equal(x, torch.full((6, 7, 8), 3.0))


def test_kernel_radius_is_scipys():
    assert len(gaussian_kernel1d(0.5, 2.5)) == 3  # int(2.5 * 0.5 + 0.5) = 1
    assert len(gaussian_kernel1d(1.5, 2.5)) == 9
    assert abs(sum(gaussian_kernel1d(0.7, 4.0)) - 1) < 1e-12
