"""The ``local`` and ``imagenet`` extractors end to end: a registrar built on each registers a
shifted 2-D phantom (instance optimisation on their features) and improves Dice and intensity error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unireg import api
from unireg.models.registrar import Registrar

from .features.test_imagenet import random_resnet18_state_dict
from .synthetic_pairs import grid_affine, phantom

torch.set_num_threads(1)


@pytest.mark.parametrize("extractor", ["local", "imagenet"])
def test_registrar_on_extractor_registers_a_shifted_pair(extractor, tmp_path):
    kwargs = {}
    if extractor == "imagenet":  # random weights with torchvision's keys: nothing is downloaded
        torch.save(random_resnet18_state_dict(), tmp_path / "resnet18.pth")
        kwargs = {"weights": str(tmp_path / "resnet18.pth")}
    reg = Registrar(2, extractor=extractor, extractor_kwargs=kwargs, unet={"enc": [8, 8, 8], "dec": [8, 8]},
                    working={"spacing": 1.0, "max_size": 48})
    shape = (40, 40)
    a = grid_affine(shape, (1.0, 1.0), np.eye(2), (0.0, 0.0))
    f, fl = phantom(shape, a, (0.0, 0.0))
    m, ml = phantom(shape, a, (0.0, 0.0), shift=(2.5, -2.0))
    res = api.register((f, a), (m, a), labels=(ml, a), fixed_labels=(fl, a), model=reg, refine=40, affine=False,
                       qc=False)
    assert res.report["extractor"] == extractor
    before, after = res.report["dice_before"]["mean"], res.report["dice"]["mean"]
    err_before = float(np.mean((m - f) ** 2))
    err_after = float(np.mean((res.warped.data[0] - f) ** 2))
    assert after > before + 0.05, (before, after)
    assert err_after < 0.6 * err_before, (err_before, err_after)
