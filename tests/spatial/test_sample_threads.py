"""spatial.grid.sample splits large 3-D CPU samplings into one batch item per thread (ATen's 3-D
grid_sample parallelises over the batch only): the values and gradients must be those of one call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unireg.spatial import grid as G


@pytest.mark.parametrize("mode,padding", [("bilinear", "zeros"), ("bilinear", "border"), ("nearest", "zeros")])
@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_sample_equals_one_call(monkeypatch, mode, padding, threads):
    monkeypatch.setattr(G, "THREADED_MIN_POINTS", 10)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        img = torch.randn(1, 5, 9, 11, 7, generator=g, requires_grad=True)
        coords = (torch.rand(1, 3, 6, 5, 7, generator=g) * 12 - 1).requires_grad_(True)  # some outside
        grid = G.coords_vox_to_norm(coords, img.shape[2:])
        assert G._split_for_threads(img, grid)
        got = G.sample(img, coords, mode=mode, padding_mode=padding)
        ref = F.grid_sample(img, grid, mode=mode, padding_mode=padding, align_corners=True)
        assert got.shape == ref.shape
        assert torch.equal(got, ref)
        w = torch.randn(ref.shape, generator=g)
        g_got = torch.autograd.grad((got * w).sum(), [img, coords])
        g_ref = torch.autograd.grad((ref * w).sum(), [img, coords])
        for a, b in zip(g_got, g_ref, strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_small_or_single_thread_samplings_are_not_split():
    img = torch.zeros(1, 1, 4, 4, 4)
    grid = torch.zeros(1, 4, 4, 4, 3)
    assert not G._split_for_threads(img, grid)  # below THREADED_MIN_POINTS
    assert not G._split_for_threads(torch.zeros(1, 1, 4, 4), torch.zeros(1, 300, 300, 2))  # 2-D: ATen's own kernel
