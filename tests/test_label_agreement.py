"""`register --labels` and `apply --labels` through the written warp give the same label map (one
label routine: unireg.resample.warp_labels), label-wise at any number of labels, with label values exact
whatever their size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unireg import api
from unireg.io.image import Image


def _labels(shape, n: int, seed: int) -> np.ndarray:
    """Smooth random label map with exactly ``n`` labels (0..n-1), SynthMorph-style."""
    rng = np.random.default_rng(seed)
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) for _ in range(n)])
    lab = fields.argmax(0).astype(np.int16)
    assert len(np.unique(lab)) == n
    return lab


@pytest.mark.parametrize("n_labels", [10, 19, 70])
def test_register_and_apply_labels_agree(n_labels):
    shape = (72, 80)
    aff = np.diag([1.1, 0.9, 1.0, 1.0])
    lab = _labels(shape, n_labels, n_labels)
    fixed = ndimage.gaussian_filter(lab.astype(np.float32) * 7 % 13, 1.0) + 1
    moving = np.roll(fixed, (2, -1), (0, 1))
    mlab = np.roll(lab, (2, -1), (0, 1))
    res = api.register((fixed, aff), (moving, aff), labels=Image(mlab[None], aff, None), refine=5, qc=False)
    via_warp = api.apply((res.warp_mm, aff), Image(mlab[None], aff, None), (fixed, aff), labels=True)
    agree = float((via_warp.data[0] == res.warped_labels.data[0]).mean())
    assert agree >= 0.9995, (n_labels, agree)
