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


def _head_in_air(shift: int = 0):
    """A textured ellipsoid 'head' filling a third of a 2 mm field of view of air."""
    g = np.random.default_rng(1)
    idx = np.indices((56, 60, 52)).astype(np.float32)
    r = np.sqrt(((idx[0] - 28) / 12) ** 2 + ((idx[1] - 30) / 14) ** 2 + ((idx[2] - 26) / 11) ** 2)
    from scipy import ndimage

    tex = ndimage.gaussian_filter(g.standard_normal(r.shape), 2.0)
    img = ((r < 1) * (0.6 + 0.8 * tex / np.abs(tex).max())).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    return api.as_image((np.roll(img, shift, axis=0), aff))


def test_the_3d_working_grid_covers_the_object_not_the_air_and_the_warp_continues_its_edge(monkeypatch):
    from unireg.stages import prepare as prep

    fixed, moving = _head_in_air(), _head_in_air(shift=2)
    r = api.register(fixed, moving, qc=False, affine=False, refine=5)
    crop = r.report["working_grid"]["shape"]
    # the head (24x28x22 voxels) + 12 mm, not 56x60x52
    assert all(c < n for c, n in zip(crop, (56, 60, 52), strict=False))
    assert all(c >= o + 2 * 6 for c, o in zip(crop, (23, 27, 21), strict=False)), crop
    # outside the box the warp repeats its edge values (constant along the axis that leaves the box), so
    # it has no jump where the box ends: the 4 mm shift has spread 1-3 mm beyond the box's edges
    w = r.warp_mm
    assert np.allclose(w[:, :2], w[:, 2:3], atol=1e-5) and np.allclose(w[:, -2:], w[:, -3:-2], atol=1e-5)
    assert np.abs(w[0, :2]).max() > 0.5
    assert max(float(np.abs(np.diff(w, axis=a)).max()) for a in (1, 2, 3)) < 1.5
    assert r.report["folded_percent"] == 0.0
    monkeypatch.setitem(prep.OBJECT_MARGIN_MM, 3, None)
    whole = api.register(fixed, moving, qc=False, affine=False, refine=5)
    assert whole.report["working_grid"]["shape"] == [56, 60, 52]
    inside = (np.asarray(fixed.data[0]) > 0)
    # the shift (4 mm along x) is recovered as well inside the head with the smaller grid
    err_crop = np.abs(r.warp_mm[0][inside] - 4.0).mean()
    err_whole = np.abs(whole.warp_mm[0][inside] - 4.0).mean()
    assert err_crop < 1.0 and err_crop < err_whole + 0.1
