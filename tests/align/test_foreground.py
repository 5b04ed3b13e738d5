"""Otsu's threshold (the affine stage's object masks) against SimpleITK's OtsuThreshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unireg.align.foreground import otsu_threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_simpleitk(seed):
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(seed)
    lo = rng.normal(rng.uniform(0.05, 0.2), 0.05, 20000)
    hi = rng.normal(rng.uniform(0.5, 0.9), 0.1, int(rng.integers(30, 150)) * 100)
    x = np.concatenate([lo, hi]).astype(np.float32)
    f = sitk.OtsuThresholdImageFilter()
    f.SetInsideValue(0)
    f.SetOutsideValue(1)
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.GetImageFromArray(x.reshape(-1, 100)))
    assert otsu_threshold(torch.from_numpy(x)) == pytest.approx(f.GetThreshold(), abs=2e-3 * (x.max() - x.min()))


def test_otsu_separates_noisy_field_of_view_from_object():
    """Noise and bias inside a field of view sit above a fixed 0.05 threshold; Otsu's does not."""
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.09, 0.04, (120, 120)), 0, None)
    img[30:90, 40:100] = rng.uniform(0.5, 1.0, (60, 60))
    t = otsu_threshold(torch.from_numpy(img))
    fg = img > t
    assert fg[30:90, 40:100].mean() > 0.95 and fg.sum() < 1.1 * 60 * 60


def test_constant_and_empty_images():
    assert otsu_threshold(torch.full((5, 5), 0.3)) == pytest.approx(0.3)
    assert otsu_threshold(torch.tensor([float("nan")])) == 0.0
