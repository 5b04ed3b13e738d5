"""The held-out suite's generators: exact true maps, stated ranges, reproducible seeds."""

import numpy as np
import pytest

from unireg.evaluation.suite.cases import HELD_OUT, INTENSITIES, DEFORMATIONS, CaseSpec, build_case, case_list
from unireg.evaluation.suite.deformations import MAX_DISP_RANGE_MM, make_deformation
from unireg.evaluation.suite.grids import Grid
from unireg.evaluation.suite.intensity import draw_intensity
from unireg.evaluation.suite.scoring import score_map


def _grid(nd):
    shape = (56, 64, 48)[:nd]
    aff = np.eye(4)
    aff[:nd, 3] = -(np.array(shape) - 1) / 2
    return Grid(shape, aff)


@pytest.mark.parametrize("family", DEFORMATIONS)
def test_true_map_round_trip_2d(family):
    g = _grid(2)
    tmap, info = make_deformation(family, g, np.random.default_rng(3))
    p = g.points()
    y = tmap.forward(p)
    back = tmap.inverse(y)
    assert np.linalg.norm(back - p, axis=1).max() < 0.05
    fwd_of_inv = tmap.forward(tmap.inverse(p))
    assert np.linalg.norm(fwd_of_inv - p, axis=1).max() < 0.05
    lo, hi = MAX_DISP_RANGE_MM[family]
    peak = np.linalg.norm(tmap.deformable(p) - p, axis=1).max()
    assert lo - 0.5 <= peak <= hi + 0.5, (family, peak, info)


def test_true_map_round_trip_3d_and_affine():
    g = Grid((30, 34, 28), np.diag([1.5, 1.5, 1.5, 1.0]))
    tmap, info = make_deformation("affine", g, np.random.default_rng(0))
    p = g.points()
    assert np.linalg.norm(tmap.inverse(tmap.forward(p)) - p, axis=1).max() < 0.05
    assert not np.allclose(tmap.matrix, np.eye(4))  # the affine part is really there


@pytest.mark.parametrize("seed", range(4))
def test_max_displacement_in_stated_range(seed):
    g = _grid(2)
    for family in ("smooth", "bspline", "radial", "affine"):
        tmap, info = make_deformation(family, g, np.random.default_rng(100 + seed))
        lo, hi = MAX_DISP_RANGE_MM[family]
        p = g.points()
        peak = np.linalg.norm(tmap.deformable(p) - p, axis=1).max()
        assert lo - 0.5 <= peak <= hi + 0.5, (family, peak, info)
        if family == "affine":
            ang = np.abs(info["angles_deg"]).max()
            assert ang <= 30 and np.linalg.norm(info["translation_mm"]) <= 20
            assert np.all(np.abs(np.array(info["scale"]) - 1) <= 0.1)


def test_same_seed_same_arrays_and_seeds_differ():
    spec = CaseSpec(2, 0, "bspline", "piecewise", "oblique", "labels", tiny=True)
    a, b = build_case(spec), build_case(spec)
    for k in ("fixed", "moving", "fixed_labels", "moving_labels"):
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
    np.testing.assert_array_equal(a["true_warp_mm"], b["true_warp_mm"])
    c = build_case(CaseSpec(2, 1, "bspline", "piecewise", "oblique", "labels", tiny=True))
    assert not np.array_equal(a["true_warp_mm"], c["true_warp_mm"])


def test_true_map_is_the_ground_truth_of_the_rendered_pair():
    """Scoring the known map itself gives perfect overlap, the identity does not (catches a sign or
    direction error between rendering and the true fixed->moving map)."""
    case = build_case(CaseSpec(2, 0, "smooth", "t2", "native", "body", tiny=False))
    truth = score_map(case, case["true_warp_mm"])
    none = score_map(case, np.zeros_like(case["true_warp_mm"]))
    assert truth["epe_mm"] == 0 and truth["dice"] > 0.97
    assert none["dice"] < truth["dice"] - 0.05 and none["epe_mm"] > 1.0
    assert case["meta"]["inverse_residual_mm"] < 0.01


def test_piecewise_is_non_monotonic_and_held_out_names_exist():
    assert {"bspline", "radial"} <= set(DEFORMATIONS) and {"piecewise", "ct"} <= set(INTENSITIES)
    assert HELD_OUT == {"bspline", "radial", "piecewise", "ct"}
    for s in range(5):
        (xs, ys), _ = draw_intensity("piecewise", np.random.default_rng(s))
        d = np.diff(ys[1:])
        assert (d > 0).any() and (d < 0).any()


def test_case_list_is_frozen_and_filters():
    full = case_list(dims=(2, 3), pairs={2: 6, 3: 2})
    assert len(full) == 5 * 6 + 5 * 2
    assert len({c.name for c in full}) == len(full)
    only = case_list(dims=(2,), pairs=6, families=["radial", "mni"])
    assert only and all(c.deformation == "radial" and c.anatomy == "mni" for c in only)
    with pytest.raises(ValueError):
        case_list(families=["nope"])


def test_moving_image_pulled_back_through_the_true_map_matches_the_fixed_image():
    """The rendered moving IMAGE (not only its labels) follows the true map: pulled back to the fixed grid
    through the true fixed->moving map it matches the (monotonically mapped) fixed image far better than
    without the map."""
    from unireg.evaluation.suite.scoring import _sample_field

    case = build_case(CaseSpec(2, 0, "smooth", "gamma", "native", "body", tiny=False))
    f_img, f_aff = case["fixed"]
    m_img, m_aff = case["moving"]
    nd = f_img.ndim
    axes = [np.arange(n, dtype=np.float64) for n in f_img.shape]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, nd) + f_aff[:nd, 3]
    u = case["true_warp_mm"].reshape(nd, -1).T
    stack = np.stack([m_img] * nd)  # _sample_field wants nd channels
    back, _ = _sample_field(stack, m_aff, p + u)
    same, _ = _sample_field(stack, m_aff, p)
    r_true = np.corrcoef(back[:, 0], f_img.reshape(-1))[0, 1]
    r_none = np.corrcoef(same[:, 0], f_img.reshape(-1))[0, 1]
    assert r_true > 0.98 and (1 - r_true) < 0.5 * (1 - r_none), (r_true, r_none)
