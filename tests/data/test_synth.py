"""Synthesis of known deformations and contrasts: magnitudes, inverses, determinism."""

from __future__ import annotations

import torch

from unireg.data.synth import (
    CONTRASTS,
    add_noise,
    bias_field,
    coarse_shape,
    deform_pair_field,
    make_moving,
    random_velocity,
    remap_contrast,
)
from unireg.spatial.integrate import compose, integrate_velocity

torch.set_num_threads(1)


def test_random_velocity_peak_displacement_and_seed():
    v = random_velocity((20, 24), max_disp_vox=3.0, seed=5)
    assert v.shape == (1, 2, 20, 24)
    peak = integrate_velocity(v).norm(dim=1).max().item()
    assert abs(peak - 3.0) < 0.15
    assert torch.equal(v, random_velocity((20, 24), max_disp_vox=3.0, seed=5))
    assert not torch.equal(v, random_velocity((20, 24), max_disp_vox=3.0, seed=6))


def test_pair_fields_are_inverse():
    v = random_velocity((24, 24, 24), max_disp_vox=1.0, seed=0)
    fwd, inv = deform_pair_field(v)
    resid = compose(fwd, inv)[:, :, 2:-2, 2:-2, 2:-2]  # x + fwd + inv(x + fwd) - x, away from the border
    assert resid.abs().max() < 0.1 and resid.abs().mean() < 0.01
    fwd2, inv2 = deform_pair_field(v, (47, 47, 47))  # twice as fine: (47 - 1) / (24 - 1) = 2
    assert fwd2.shape == (1, 3, 47, 47, 47) and inv2.shape == fwd2.shape
    assert abs(fwd2.abs().max() / fwd.abs().max() - 2.0) < 0.1  # values rescale with the grid


def test_coarse_shape():
    assert coarse_shape((9, 10, 1 + 4 * 7), 4) == (3, 4, 8)


def test_remap_contrast_endpoints_and_range():
    x = torch.linspace(0, 1, 101)
    for kind, (xs, ys) in CONTRASTS.items():
        y = remap_contrast(x, kind)
        assert torch.allclose(y[[0, -1]], torch.tensor([ys[0], ys[-1]]), atol=1e-6), kind
        assert y.min() >= 0 and y.max() <= 1
    assert torch.allclose(remap_contrast(x, "t1"), x)


def test_bias_and_noise_deterministic():
    b = bias_field((16, 16), 0.2, seed=1)
    assert b.min() >= torch.exp(torch.tensor(-0.2)) - 1e-6 and b.max() <= torch.exp(torch.tensor(0.2)) + 1e-6
    assert torch.equal(b, bias_field((16, 16), 0.2, seed=1))
    x = torch.zeros(8, 8)
    assert torch.equal(add_noise(x, 0.1, 3), add_noise(x, 0.1, 3))


def test_make_moving_is_deformed_and_seeded():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(36.0), indexing="ij")
    t1 = torch.exp(-((yy - 16) ** 2 + (xx - 18) ** 2) / 60.0)
    v = random_velocity(coarse_shape(t1.shape, 4), max_disp_vox=1.0, seed=2)
    a = make_moving(t1, v, contrast="t1", bias=0.0, noise=0.0, seed=0)
    b = make_moving(t1, v, contrast="t1", bias=0.0, noise=0.0, seed=0)
    assert a.shape == t1.shape and torch.equal(a, b)
    assert (a - t1).abs().max() > 0.02  # actually deformed
    c = make_moving(t1, torch.zeros_like(v), contrast="t1", bias=0.0, noise=0.0, seed=0)
    assert torch.allclose(c, t1, atol=1e-5)  # zero velocity: unchanged
