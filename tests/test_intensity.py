"""unireg.intensity: the one percentile-rescaling routine, by hand and against its former copies."""

import numpy as np
import pytest
import torch

from unireg.features.base import percentile_rescale as features_rescale
from unireg.intensity import normalize_intensity, percentile_rescale
from unireg.preprocess import normalize_intensity as preprocess_normalize


def test_one_routine_everywhere():
    assert features_rescale is percentile_rescale
    assert preprocess_normalize is normalize_intensity


def test_normalize_intensity_by_hand():
    """Non-zero voxels 1..200: the 10th percentile (linear) is 1 + 0.1*199 = 20.9, the 90th 180.1."""
    x = np.arange(201, dtype=np.float32)
    out = normalize_intensity(x, 10, 90)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out[100] == pytest.approx((100 - 20.9) / (180.1 - 20.9), abs=1e-6)
    assert out[0] == 0.0 and out[15] == 0.0 and out[190] == 1.0


def test_normalize_intensity_mostly_zero_and_constant():
    x = np.zeros(1000, np.float32)
    x[:5] = 10.0  # under 1 % non-zero: percentiles of every voxel (0..0) -> min..max fallback
    out = normalize_intensity(x)
    assert out[0] == 1.0 and out[10] == 0.0
    assert not normalize_intensity(np.full((4, 4), 3.0, np.float32)).any()


def test_percentile_rescale_per_item_and_scale_only():
    a = torch.arange(101, dtype=torch.float32).reshape(1, 1, 101)
    x = torch.cat([a, 2 * a])  # two items: 0..100 and 0..200
    out = percentile_rescale(x, 10, 90)
    assert out[0, 0, 50].item() == pytest.approx(0.5) and out[1, 0, 50].item() == pytest.approx(0.5)
    assert out[0, 0, 30].item() == pytest.approx(0.25)
    s = percentile_rescale(x, None, 50.0, clip="low")  # x / P50, not clipped at 1
    assert s[0, 0, 100].item() == pytest.approx(2.0) and s[1, 0, 25].item() == pytest.approx(0.5)
    assert percentile_rescale(x, 10, 90, clip=False)[0, 0, 0].item() == pytest.approx(-0.125)


def test_percentile_rescale_gradient_is_the_linear_map():
    x = torch.arange(101, dtype=torch.float64).reshape(1, 1, 101).requires_grad_(True)
    percentile_rescale(x, 10, 90).sum().backward()
    expected = torch.where((x[0, 0] >= 10) & (x[0, 0] <= 90), 1 / 80, 0.0).double()
    assert torch.allclose(x.grad[0, 0], expected)  # percentiles are constants: no extra terms at 10 and 90


@pytest.mark.parametrize("low,high,nonzero", [(0.5, 99.5, True), (1.0, 99.0, False)])
def test_subsampled_percentiles_match_the_full_ones(low, high, nonzero):
    """Within 1e-3 of numpy's percentiles over every voxel (the former numpy / torch copies)."""
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, size=(130, 120, 110)).astype(np.float32)
    x[:20] = 0.0
    vals = x[x != 0] if nonzero else x.ravel()
    lo, hi = np.percentile(vals, [low, high])
    ref = np.clip((x - lo) / (hi - lo), 0, 1)
    got = percentile_rescale(torch.from_numpy(x)[None, None], low, high, nonzero=nonzero)[0, 0].numpy()
    assert np.abs(got - ref).max() < 1e-3
    if nonzero:
        assert np.abs(normalize_intensity(x) - ref).max() < 1e-3


def test_bad_clip_argument():
    with pytest.raises(ValueError, match="clip"):
        percentile_rescale(torch.rand(1, 1, 8), clip="high")
