"""The thread count the stages run with: one for a small 2-D pair, the caller's otherwise (restored after)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unireg import api
from unireg.stages import deformable
from unireg.stages.prepare import SMALL_2D_VOXELS, stage_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _state(nd: int, shape, device: str = "cpu"):
    return SimpleNamespace(nd=nd, w_shape=tuple(shape), device=torch.device(device))


@pytest.mark.parametrize(
    "nd, shape, inside",
    [
        (2, (197, 233), 1),  # an MNI slice at the 1 mm working grid
        (2, (400, 400), 2),  # beyond SMALL_2D_VOXELS
        (3, (56, 64, 52), 2),  # a small 3-D pair still gains from two threads
    ],
)
def test_stage_threads_by_dimension_and_size(two_threads, nd, shape, inside):
    assert (int(np.prod(shape)) <= SMALL_2D_VOXELS) == (nd == 2 and shape == (197, 233))
    with stage_threads(_state(nd, shape)):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == 2


def test_stage_threads_restores_the_callers_count_after_an_error(two_threads):
    with pytest.raises(RuntimeError), stage_threads(_state(2, (64, 64))):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a stage failed")
    assert torch.get_num_threads() == 2


def test_a_small_2d_registration_runs_its_stages_on_one_thread(two_threads, monkeypatch):
    g = np.random.default_rng(0)
    img = np.zeros((72, 80), np.float32)
    img[20:50, 18:60] = 1.0
    img[30:40, 30:44] = 0.4
    img += 0.02 * g.standard_normal(img.shape).astype(np.float32)
    aff = np.eye(4)
    seen = []
    real = deformable.network
    monkeypatch.setattr(deformable, "network", lambda s: (seen.append(torch.get_num_threads()), real(s))[1])
    r = api.register(api.as_image((img, aff)), api.as_image((np.roll(img, 2, axis=0), aff)), qc=False, refine=0)
    assert seen == [1] and r.report["threads"] == 1
    assert torch.get_num_threads() == 2  # the caller's count, back
