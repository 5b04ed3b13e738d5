import torch

from unireg.spatial.grid import warp
from unireg.spatial.integrate import compose, integrate_velocity
from unireg.spatial.jacobian import folding_stats, jacobian_determinant
from unireg.data.synth import random_velocity


def test_constant_velocity_integrates_to_translation():
    v = torch.zeros(1, 3, 8, 8, 8, dtype=torch.float64)
    v[:, 1] = 1.5
    d = integrate_velocity(v)
    # interior is exactly the translation (border padding keeps it constant everywhere)
    assert torch.allclose(d, v, atol=1e-9)


def test_exp_v_and_exp_minus_v_are_inverse():
    v = random_velocity((32, 32, 32), max_disp_vox=3.0, seed=1, control=4).double()
    fwd = integrate_velocity(v)
    inv = integrate_velocity(-v)
    ident = compose(fwd, inv)
    inner = ident[..., 6:-6, 6:-6, 6:-6]
    assert inner.abs().mean() < 0.02
    assert inner.abs().max() < 0.15


def test_jacobian_of_linear_field():
    from unireg.spatial.grid import identity_coords

    p = identity_coords((6, 7), dtype=torch.float64).unsqueeze(0)
    disp = torch.zeros_like(p)
    disp[:, 0] = 0.5 * p[:, 0]  # stretch axis 0 by 1.5
    disp[:, 1] = -0.25 * p[:, 1]  # compress axis 1 by 0.75
    j = jacobian_determinant(disp)
    assert torch.allclose(j, torch.full_like(j, 1.5 * 0.75))


def test_folding_detected():
    disp = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    disp[0, 0, 5, :] = -3.0  # row 5 jumps backwards past its neighbours
    stats = folding_stats(jacobian_determinant(disp))
    assert stats["folded_percent"] > 0
    ok = folding_stats(jacobian_determinant(torch.zeros(1, 2, 10, 10)))
    assert ok["folded_percent"] == 0 and ok["sdlogj"] == 0


def test_svf_is_diffeomorphic():
    v = random_velocity((32, 32), max_disp_vox=6.0, seed=3)
    j = jacobian_determinant(integrate_velocity(v))
    assert j.min() > 0
