"""The multi-level refinement: the native level's features computed by a worker thread change nothing."""

from __future__ import annotations

import torch

import unireg.align.refine as refine
from unireg.align.refine import refine_multilevel, schedule


def _pair():
    g = torch.Generator().manual_seed(0)
    fine_shape = (33, 37, 29)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *fine_shape, generator=g), 5, 1, 2)
    moving = torch.roll(fixed, shifts=(1, -1, 1), dims=(2, 3, 4))
    w_shape = (17, 19, 15)
    down = lambda x: torch.nn.functional.interpolate(x, size=w_shape, mode="trilinear", align_corners=True)  # noqa: E731
    return down(fixed), down(moving), fixed, moving


def test_native_features_from_a_worker_thread_are_the_in_line_ones(monkeypatch):
    fixed_w, moving_w, fixed_f, moving_f = _pair()
    v0 = torch.zeros(1, 3, 9, 10, 8)
    levels = schedule(iterations=3, ndim=3)
    assert [lv.name for lv in levels] == ["coarse", "working", "native"]
    calls = []
    real = refine._native_features

    def spy(fine, lv):
        fut = real(fine, lv)
        calls.append(fut)
        return fut

    monkeypatch.setattr(refine, "_native_features", spy)
    out = {}
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        out[threads] = refine_multilevel(v0, fixed_w, moving_w, levels, fine=(fixed_f, moving_f, 2.0), seed=3)
    assert calls[0] is None and calls[1] is not None  # in line with one thread, a worker with two
    assert out[1].abs().max() > 1e-3  # the pair moved the velocity
    # equal up to float rounding (the squarings' image gradient is summed over threads), which Adam's
    # per-element step can amplify where a gradient is near zero: a few elements of 14 535 differ by
    # up to 0.6 % of the largest velocity on one CPU, none on another
    diff = (out[1] - out[2]).abs()
    assert diff.max() < 0.01 * out[1].abs().max()
    assert (diff > 1e-4).float().mean() < 0.01


def test_fast_schedule_skips_the_working_level_and_keeps_native_where_there_is_one():
    """--fast: coarse then native (fewer coarse iterations in 3-D); without a native grid, coarse only."""
    from unireg.align.refine import FAST_ITERATIONS

    assert [(lv.name, lv.iterations) for lv in schedule(fast=True, ndim=3)] == [
        ("coarse", FAST_ITERATIONS[3]["coarse"]),
        ("native", FAST_ITERATIONS[3]["native"]),
    ]
    assert FAST_ITERATIONS[3]["coarse"] < schedule(ndim=3)[0].iterations
    assert [lv.name for lv in schedule(fast=True, native=False, ndim=2)] == ["coarse"]
    assert [lv.name for lv in schedule(ndim=3)] == ["coarse", "working", "native"]
    assert schedule(iterations=0, fast=True, ndim=3) == ()


def _aligned_noisy_pair(seed: int, n: int = 96, noise: float = 0.04):
    """A smooth 2-D texture and the same texture under another contrast (non-monotonic) plus noise:
    aligned, the true map is the identity."""
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.avg_pool2d(torch.rand(1, 1, n, n, generator=g), 7, 1, 3)
    f = (f - f.min()) / (f.max() - f.min())
    m = (1 - f) ** 2 + noise * torch.randn(f.shape, generator=g)
    return f, m


def test_feature_cost_prefers_the_identity_on_an_aligned_pair():
    """On grid points the moving features pulled half a voxel are averaged (their noise too) while the
    fixed ones are not, so a half-voxel shift looked cheaper than the true identity (0.0754 vs 0.0787
    for seed 0); both interpolated at the same random points, the identity is the cheaper."""
    from unireg.features.mind import mind_ssc

    for seed in range(3):
        f, m = _aligned_noisy_pair(seed)
        ff, fm = mind_ssc(f), mind_ssc(m)
        half = torch.zeros(1, 2, *f.shape[2:])
        half[:, 0] = 0.5
        assert refine.mind_cost(ff, fm, None) < refine.mind_cost(ff, fm, half) * 0.98, seed


def test_refinement_leaves_an_aligned_noisy_pair_nearly_where_it_is():
    """From zero velocity the 2-D schedule moves an aligned pair by a mean 0.21-0.29 voxel with the
    features compared at shared random points, 0.38-0.43 voxel on grid points (the interpolation's
    smoothing rewarded)."""
    from unireg.spatial.integrate import integrate_velocity

    moved = []
    for seed in range(3):
        f, m = _aligned_noisy_pair(seed)
        v = refine_multilevel(torch.zeros(1, 2, *f.shape[2:]), f, m, schedule(ndim=2, native=False), seed=0)
        moved.append(float(integrate_velocity(v, 7).norm(dim=1).mean()))
    assert sum(moved) / len(moved) < 0.33, moved


def _cropped_pair(seed: int, n: int = 96, cut: int = 24):
    """An aligned 2-D body (an ellipse with a smooth texture) in two contrasts, the moving one seen
    through a field of view that ends ``cut`` rows into the fixed one (zeros beyond its edge)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    body = (((y - n / 2) / (0.42 * n)) ** 2 + ((x - n / 2) / (0.3 * n)) ** 2 <= 1).float()
    tex = torch.nn.functional.avg_pool2d(torch.rand(1, 1, n, n, generator=g), 9, 1, 4)[0, 0]
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    fov = torch.ones(n, n)
    fov[:cut] = 0
    f = body * (0.5 + 0.4 * tex)
    m = (body * (0.9 - 0.3 * tex) + 0.03 * torch.randn(n, n, generator=g).abs()) * fov
    return f[None, None], m[None, None], fov[None, None], body


def test_a_moving_image_cut_through_the_object_does_not_pull_an_aligned_pair():
    """The moving features show an edge at the cut that the fixed image does not have.  Counting only
    points that land inside the moving field of view (eroded by the features' footprint), the
    refinement moves the aligned pair a mean 0.35 voxel over the body (the contrast and noise alone,
    cf. the test above); counting every point, 0.46 (up to 0.66 near the cut)."""
    from unireg.spatial.integrate import integrate_velocity

    moved = {True: [], False: []}
    for seed in range(5):
        f, m, fov, body = _cropped_pair(seed)
        for aware in (True, False):
            v0 = torch.zeros(1, 2, *f.shape[2:])
            v = refine_multilevel(v0, f, m, schedule(ndim=2, native=False), seed=0, moving_fov_w=fov if aware else None)
            moved[aware].append(float(integrate_velocity(v, 7).norm(dim=1)[0][body > 0].mean()))
    aware, blind = sum(moved[True]) / 5, sum(moved[False]) / 5
    assert aware < 0.4 and aware < 0.85 * blind, moved


def test_valid_fov_erodes_the_field_of_view_by_the_features_footprint():
    fov = torch.zeros(1, 1, 20, 20)
    fov[..., 5:, :] = 1.0
    fov[..., 4, :] = 0.5  # a partly covered row (linear interpolation at the edge) does not count
    valid = refine.valid_fov(fov, (20, 20))
    rows = valid[0, 0, :, 10]
    assert rows[: 5 + refine.MIND_FOOTPRINT].sum() == 0 and rows[5 + refine.MIND_FOOTPRINT :].min() == 1
    # pooled to a coarser grid with the same corners, then eroded there
    assert refine.valid_fov(fov, (10, 10)).shape == (1, 1, 10, 10)


def _shifted_texture(n: int = 40, shift: int = 3):
    """A smooth 3-D texture and the same texture shifted by ``shift`` voxels along the first axis."""
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.avg_pool3d(torch.rand(1, 1, n + 24, n + 24, n + 24, generator=g), 9, 1, 4)
    fixed = f[..., 12 : 12 + n, 12 : 12 + n, 12 : 12 + n]
    moving = f[..., 12 + shift : 12 + shift + n, 12 : 12 + n, 12 : 12 + n]
    norm = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    return norm(fixed), norm(moving)


def test_a_refined_control_grid_moves_the_map_as_far_per_step_as_the_coarse_one(monkeypatch):
    """A small 3-D image's working level optimises the velocity on the working grid itself
    (FINE_CONTROL_VOXELS), whose voxels are half the control grid's: with the same Adam step in voxels
    its 15 steps moved the map 0.49 working voxels towards a 3-voxel shift where the coarse control
    grid's moved it 1.08.  With the step scaled (STEP_IN_MM) it moves 0.81.  STEP_IN_MM[3] = False:
    this test fails (checked)."""
    from unireg.align.refine import RefineLevel
    from unireg.spatial.integrate import integrate_velocity

    fixed, moving = _shifted_texture()
    v0 = torch.zeros(1, 3, 20, 20, 20)

    def moved() -> float:
        v = refine_multilevel(v0, fixed, moving, (RefineLevel("working", 15),), seed=0)
        return float(integrate_velocity(v, 7)[0, 0, 8:-8, 8:-8, 8:-8].mean().abs())

    fine = moved()
    monkeypatch.setattr(refine, "FINE_CONTROL_VOXELS", 0)  # the velocity stays on its 20^3 grid
    coarse = moved()
    assert coarse > 0.8, coarse  # the pair pulls the map (3 voxels to go)
    assert fine > 0.65 * coarse, (fine, coarse)
