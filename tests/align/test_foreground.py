"""Otsu's threshold (the affine stage's object masks) against SimpleITK's OtsuThreshold; the object's box
(the 3-D working grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unireg.align.foreground import object_box, otsu_threshold


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


def _block(shape, lo, hi):
    """A bright block (an inner brighter core) in air: the object spans ``lo..hi-1`` per axis."""
    img = torch.zeros(shape)
    img[tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))] = 0.6
    img[tuple(slice(a + (b - a) // 3, b - (b - a) // 3) for a, b in zip(lo, hi, strict=False))] = 1.0
    return img


def test_object_box_is_the_object_plus_the_margin_clipped_to_the_grid():
    box = object_box(_block((60, 50, 40), (22, 12, 17), (39, 29, 34)), 3)
    assert [(b.start, b.stop) for b in box] == [(19, 42), (9, 32), (14, 37)]
    near_edge = object_box(_block((60, 50, 40), (1, 12, 17), (18, 29, 34)), 3)
    assert near_edge[0] == slice(0, 21)  # clipped at the grid's first voxel


def test_object_box_ignores_stray_background_noise_but_not_a_user_mask():
    img = _block((60, 50, 40), (22, 17, 12), (39, 34, 29))
    img[2, 2, 2] = img[57, 47, 37] = 1.0  # two bright stray voxels in the corners (a ghost, a spike)
    assert [(b.start, b.stop) for b in object_box(img, 2)] == [(20, 41), (15, 36), (10, 31)]
    mask = torch.zeros(img.shape, dtype=torch.bool)
    mask[10:50, 5:45, 5:35] = True
    assert [(b.start, b.stop) for b in object_box(img, 2, mask=mask)] == [(8, 52), (3, 47), (3, 37)]


def test_object_box_declines_when_the_object_fills_the_grid():
    assert object_box(_block((40, 40, 40), (1, 1, 1), (39, 39, 39)), 2) is None  # saving < 10 %
    assert object_box(torch.zeros(20, 20, 20), 2) is None  # nothing above the threshold
