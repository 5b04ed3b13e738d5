"""Similarity terms of unireg.losses."""

from __future__ import annotations

import torch

from unireg.losses import feature_mse, feature_mse_each


def test_feature_mse_each_is_feature_mse_of_each_item_alone():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 4, 6, 7, generator=g), torch.rand(3, 4, 6, 7, generator=g)
    mask = (torch.rand(3, 1, 6, 7, generator=g) > 0.4).float()
    mask[2] = 0  # an item with nothing to compare: 0, not NaN
    each = feature_mse_each(a, b, mask)
    assert each.shape == (3,)
    for i in range(3):
        assert torch.allclose(each[i], feature_mse(a[i : i + 1], b[i : i + 1], mask[i : i + 1]))
    shared = (mask[:1] > 0).float()  # one mask for every item broadcasts
    each = feature_mse_each(a, b, shared)
    for i in range(3):
        assert torch.allclose(each[i], feature_mse(a[i : i + 1], b[i : i + 1], shared))
