"""MIND-SSC: channel counts, shapes, a loop reference, invariance, frozen, gradients."""

import time

import numpy as np
import pytest
import torch

from unireg.features import MIND, create_extractor, mind_ssc
from unireg.features.mind import mind_variance, ssc_pairs

torch.set_num_threads(1)


def _smooth_image(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1) + tuple(shape), generator=g, dtype=dtype)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    return pool(x, 3, stride=1, padding=1, count_include_pad=False) + 0.1 * x


def _assert_frozen(ext, image):
    image = image.clone().requires_grad_(True)
    ext(image).square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training


@pytest.mark.parametrize("ndim, channels", [(3, 12), (2, 4)])
def test_documented_channel_counts(ndim, channels):
    assert len(ssc_pairs(ndim)) == channels
    ext = create_extractor("mind", ndim)
    assert ext.out_channels == channels
    # every SSC pair is two neighbours at squared distance 2 (in units of the dilation)
    for a, b in ssc_pairs(ndim):
        assert sum((u - v) ** 2 for u, v in zip(a, b)) == 2


@pytest.mark.parametrize("shape", [(7, 9, 11), (5, 6, 4), (13, 10), (3, 17)])
def test_output_shape_equals_input_shape(shape):
    ext = MIND(ndim=len(shape))
    out = ext(_smooth_image(shape))
    assert out.shape == (1, ext.out_channels) + shape
    assert torch.isfinite(out).all()
    assert out.max() <= 1.0 and out.min() > 0.0
    # normalised by the max over channels: the best-matching channel is exactly 1
    assert torch.allclose(out.amax(dim=1), torch.ones(shape))


def _reference_ssd_2d(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """Loop implementation of the patch distances ``D_k`` of the module docstring (replicate borders)."""
    h, w = img.shape

    def px(i, j):
        return img[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]

    pairs = ssc_pairs(2)
    diff = np.zeros((len(pairs), h, w))
    for k, (a, b) in enumerate(pairs):
        for i in range(h):
            for j in range(w):
                diff[k, i, j] = (px(i + dilation * a[0], j + dilation * a[1]) - px(i + dilation * b[0], j + dilation * b[1])) ** 2
    ssd = np.zeros_like(diff)
    for k in range(len(pairs)):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for di in range(-radius, radius + 1):
                    for dj in range(-radius, radius + 1):
                        acc += diff[k, min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)]
                ssd[k, i, j] = acc / (2 * radius + 1) ** 2
    return ssd


def _reference_mind_2d(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """Loop implementation of the module docstring's definition (replicate borders)."""
    ssd = _reference_ssd_2d(img, radius, dilation)
    var = ssd.mean(0)
    var = np.clip(var, 1e-3 * var.mean(), 1e3 * var.mean())
    e = np.exp(-ssd / var)
    return e / e.max(0)


@pytest.mark.parametrize("radius, dilation", [(1, 1), (1, 2), (2, 1)])
def test_matches_loop_reference_2d(radius, dilation):
    img = _smooth_image((6, 7), seed=3, dtype=torch.float64)
    out = mind_ssc(img, radius=radius, dilation=dilation)[0].numpy()
    ref = _reference_mind_2d(img[0, 0].numpy(), radius, dilation)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("radius, dilation", [(1, 2), (2, 1)])
def test_variance_is_the_mean_patch_distance_unclamped(radius, dilation):
    img = _smooth_image((14, 7), seed=5, dtype=torch.float64)
    img[..., :7, :] = 0.25  # a flat corner: its variance is zero there (mind_ssc clamps it, this does not)
    v = mind_variance(img, radius=radius, dilation=dilation)[0, 0].numpy()
    np.testing.assert_allclose(v, _reference_ssd_2d(img[0, 0].numpy(), radius, dilation).mean(0), rtol=1e-10, atol=1e-14)
    assert v.min() == 0.0


def test_3d_uses_the_same_code_path_as_2d():
    # a 3-D image constant along the last axis gives features constant along that axis
    img2 = _smooth_image((8, 9), seed=4, dtype=torch.float64)
    img3 = img2[..., None].expand(-1, -1, -1, -1, 5).contiguous()
    out = mind_ssc(img3)
    assert torch.allclose(out, out[..., :1].expand_as(out))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("a, b", [(3.7, -2.0), (-0.5, 10.0), (1000.0, 0.0)])
def test_invariant_to_affine_intensity_change(ndim, a, b):
    shape = (12, 11, 10) if ndim == 3 else (24, 21)
    img = _smooth_image(shape, seed=1)
    ext = MIND(ndim)
    assert torch.allclose(ext(img), ext(a * img + b), atol=1e-4)


def test_constant_image_gives_ones():
    out = MIND(3)(torch.full((1, 1, 5, 6, 7), 3.0))
    assert torch.equal(out, torch.ones(1, 12, 5, 6, 7))


@pytest.mark.parametrize("ndim", [2, 3])
def test_frozen_and_gradient_reaches_the_input(ndim):
    ext = MIND(ndim)
    assert len(list(ext.parameters())) == 0
    _assert_frozen(ext, _smooth_image((9, 8, 7) if ndim == 3 else (15, 16)))


def test_gradcheck_float64():
    img = _smooth_image((5, 6), seed=2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: mind_ssc(x, radius=1, dilation=1), (img,))


def test_deterministic_and_batched_items_independent():
    a, b = _smooth_image((10, 9, 8), seed=5), _smooth_image((10, 9, 8), seed=6)
    ext = MIND(3)
    both = ext(torch.cat([a, 50 * b]))
    assert torch.allclose(both[:1], ext(a), atol=1e-6)
    assert torch.allclose(both[1:], ext(b), atol=1e-4)
    assert torch.equal(ext(a), ext(a))


@pytest.mark.slow
def test_fast_on_a_brain_sized_volume():
    img = torch.rand(1, 1, 100, 120, 100)
    ext = MIND(3)
    ext(img)
    t0 = time.perf_counter()
    ext(img)
    assert time.perf_counter() - t0 < 3.0  # ~0.6-1 s on one core; generous for shared CPUs


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("shape", [(9, 7, 6), (5, 11, 3), (12, 10)])
def test_in_place_path_equals_the_differentiable_path_bit_for_bit(shape, radius):
    """Without a gradient MIND runs its in-place box filter (two buffers in turn); with one, the plain
    sums: the same additions in the same order, so the very same features."""
    img = _smooth_image(shape, seed=5)
    fast = mind_ssc(img, radius=radius)
    with torch.enable_grad():
        plain = mind_ssc(img.clone().requires_grad_(True), radius=radius).detach()
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("shape", [(9, 7, 6), (12, 10)])
@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_output_is_the_same_features_laid_out_for_sampling(shape, grad):
    img = _smooth_image(shape, seed=6)
    with torch.set_grad_enabled(grad):
        ref = mind_ssc(img.clone().requires_grad_(grad))
        cl = mind_ssc(img.clone().requires_grad_(grad), channels_last=True)
    fmt = torch.channels_last if len(shape) == 2 else torch.channels_last_3d
    assert cl.is_contiguous(memory_format=fmt) and not ref.is_contiguous(memory_format=fmt)
    assert cl.shape == ref.shape and torch.equal(cl.detach(), ref.detach())
