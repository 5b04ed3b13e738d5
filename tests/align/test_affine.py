"""Affine pre-alignment: centre of mass (hand-computed) and feature-based optimisation of a shift."""

from __future__ import annotations

import numpy as np
import torch

from unireg.align.affine import center_of_mass_init, center_of_mass_world, optimize_affine, polish_affine
from unireg.align.refine import refine_velocity
from unireg.features import create_extractor
from unireg.spatial.grid import warp
from unireg.spatial.integrate import integrate_velocity

from ..spies import spy_on

torch.set_num_threads(1)


def test_center_of_mass_world_hand_computed():
    img = torch.zeros(5, 6, 4)
    img[1, 2, 3] = 1.0
    img[3, 2, 1] = 3.0  # weighted centroid voxel (2.5, 2, 1.5)
    a = np.diag([2.0, 1.0, 0.5, 1.0])
    a[:3, 3] = [10.0, -5.0, 1.0]
    assert np.allclose(center_of_mass_world(img, a), [15.0, -3.0, 1.75])


def test_center_of_mass_init_is_the_centroid_translation():
    img = torch.zeros(8, 8)
    img[2:4, 3:6] = 1.0
    fa = np.eye(4)
    ma = np.eye(4)
    ma[:2, 3] = [3.0, -2.0]  # the same array seen 3 mm right and 2 mm posterior
    t = center_of_mass_init(img, fa, img, ma)
    assert t.shape == (3, 3)
    assert np.allclose(t, [[1, 0, 3.0], [0, 1, -2.0], [0, 0, 1]])


def _blobs(shape, centres, sigma=3.0):
    yy, xx = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    out = torch.zeros(shape)
    for k, (cy, cx) in enumerate(centres):
        out += (1.0 - 0.2 * k) * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return out


def test_optimize_affine_recovers_a_shift():
    """Moving shows the object shifted by (2, -1.5) mm; started from the identity the optimiser finds it."""
    shape = (40, 44)
    centres = [(20, 22), (12, 30), (28, 12), (10, 10)]
    shift = np.array([2.0, -1.5])
    fixed = _blobs(shape, centres)
    moving = _blobs(shape, [(cy + shift[0], cx + shift[1]) for cy, cx in centres])
    a = np.eye(4)
    a[:2, 3] = [-5.0, 7.0]
    mind = create_extractor("mind", 2)
    with torch.no_grad():
        ff, fm = mind(fixed[None, None]), mind(moving[None, None])
    t = optimize_affine(ff, a, fm, a, np.eye(3))
    centre = np.array([19.5 - 5.0, 21.5 + 7.0])
    got = t[:2, :2] @ centre + t[:2, 2] - centre
    assert np.allclose(got, shift, atol=0.35), got
    assert np.allclose(t[:2, :2], np.eye(2), atol=0.05)


def test_optimize_affine_starts_side_by_side_end_where_each_ends_alone():
    """K starts optimised in one batched run: each ends where its own run ends (its loss, gradient
    and Adam state are its own), whatever its neighbours do, with and without a moving mask."""
    shape = (40, 44)
    centres = [(20, 22), (12, 30), (28, 12), (10, 10)]
    fixed = _blobs(shape, centres)
    moving = _blobs(shape, [(cy + 2.0, cx - 1.5) for cy, cx in centres])
    a = np.eye(4)
    mind = create_extractor("mind", 2)
    with torch.no_grad():
        ff, fm = mind(fixed[None, None]), mind(moving[None, None])
    starts = [np.eye(3), np.array([[1.0, 0.1, 3.0], [-0.1, 1.0, -2.0], [0, 0, 1]]), np.diag([1.1, 0.9, 1.0])]
    mmask = torch.ones(shape, dtype=torch.bool)
    mmask[:, :6] = False
    for mask in (None, mmask):
        levels = ((2, 15), (1, 5))
        together = optimize_affine(ff, a, fm, a, np.stack(starts), levels=levels, moving_mask=mask)
        assert together.shape == (3, 3, 3)
        for k, m in enumerate(starts):
            alone = optimize_affine(ff, a, fm, a, m, levels=levels, moving_mask=mask)
            assert alone.shape == (3, 3)
            assert np.allclose(together[k], alone, atol=1e-6), (k, together[k] - alone)
        assert not np.allclose(together[0], together[1], atol=1e-3)


def test_refine_velocity_reduces_feature_loss():
    shape = (32, 32)
    fixed = _blobs(shape, [(16, 16), (8, 22)])
    moving = _blobs(shape, [(17, 15), (9, 21)])
    mind = create_extractor("mind", 2)
    with torch.no_grad():
        ff, fm = mind(fixed[None, None]), mind(moving[None, None])
    v0 = torch.zeros(1, 2, 16, 16)
    v = refine_velocity(v0, ff, fm, iterations=30)
    assert v.shape == v0.shape and not v.requires_grad

    def loss(vel):
        from unireg.spatial.grid import resize_field

        d = resize_field(integrate_velocity(vel), shape)
        return float((warp(fm, d) - ff).pow(2).mean())

    assert loss(v) < 0.8 * loss(v0)
    assert refine_velocity(v0, ff, fm, iterations=0) is v0


def _shift_pair(shift, shape=(40, 44)):
    centres = [(20, 22), (12, 30), (28, 12), (10, 10)]
    fixed = _blobs(shape, centres)
    moving = _blobs(shape, [(cy + shift[0], cx + shift[1]) for cy, cx in centres])
    mind = create_extractor("mind", 2)
    with torch.no_grad():
        return mind(fixed[None, None]), mind(moving[None, None])


def _translation_of(t: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return t[:2, :2] @ centre + t[:2, 2] - centre


def test_polish_affine_finishes_an_inexact_start():
    """A start 0.8 mm off the true (sub-voxel) shift ends within 0.15 mm of it: the polish samples the
    features at random points (no pooling), so it is not held to the optimiser's coarsest level."""
    shift = np.array([1.3, -0.6])
    ff, fm = _shift_pair(shift)
    a = np.eye(4)
    a[:2, 3] = [-5.0, 7.0]
    start = np.eye(3)
    start[:2, 2] = shift + [0.6, 0.5]
    t = polish_affine(ff, a, fm, a, start, iterations=60, points=2000)
    centre = np.array([19.5 - 5.0, 21.5 + 7.0])
    assert np.abs(_translation_of(t, centre) - shift).max() < 0.15, _translation_of(t, centre)
    assert np.allclose(t[:2, :2], np.eye(2), atol=0.03)
    assert np.array_equal(polish_affine(ff, a, fm, a, start, iterations=0), start)


def test_polish_affine_keeps_an_exact_start_and_respects_the_moving_mask():
    """Started at the truth it stays there; a moving mask hiding the right-hand blobs leaves the
    left-hand ones to agree with the same shift."""
    shift = np.array([2.0, -1.0])
    ff, fm = _shift_pair(shift)
    a = np.eye(4)
    start = np.eye(3)
    start[:2, 2] = shift
    centre = np.array([19.5, 21.5])
    assert (
        np.abs(_translation_of(polish_affine(ff, a, fm, a, start, iterations=40, points=2000), centre) - shift).max()
        < 0.1
    )
    mmask = torch.ones(40, 44, dtype=torch.bool)
    mmask[:, 26:] = False
    got = polish_affine(ff, a, fm, a, start, iterations=40, points=2000, moving_mask=mmask)
    assert np.abs(_translation_of(got, centre) - shift).max() < 0.15


def _shifted_phantom():
    """A 3-D blob phantom on a 1.5 mm grid and its copy moved by (4, -3, 2) mm: (fixed, moving, affine, shift)."""
    from ..synthetic_pairs import grid_affine, phantom

    c = np.zeros(3)
    fs = (32, 32, 28)
    fa = grid_affine(fs, (1.5, 1.5, 1.5), np.eye(3), c)
    f, _ = phantom(fs, fa, c)
    shift = np.array([4.0, -3.0, 2.0])
    m, _ = phantom(fs, fa, c, shift=shift)
    return f, m, fa, shift


def test_affine_stage_runs_its_polish_when_switched_on(monkeypatch):
    """The stage's polish path (off by default) still runs and keeps a clean shift found."""
    from unireg import api
    from unireg.stages import affine as affine_stage

    from ..synthetic_pairs import tiny_registrar

    f, m, fa, shift = _shifted_phantom()
    calls = []
    real = affine_stage.polish_affine

    def spy(*args, **kw):
        calls.append(kw["iterations"])
        return real(*args, **kw)

    monkeypatch.setitem(affine_stage.POLISH_ITERATIONS, 3, 10)
    monkeypatch.setattr(affine_stage, "polish_affine", spy)
    r = api.register((f, fa), (m, fa), model=tiny_registrar(3, 1.5), refine=0, qc=False)
    t = np.array(r.report["affine_matrix"])
    assert calls == [10] * (1 + affine_stage.RIGID_FIRST["deformable"][3])  # 3-D: the rigid stage's search, then the affine's
    assert np.linalg.norm(t[:3, 3] - shift) < 0.5, t


def _turned_pair(deg: float, shift, shape=(128, 144)):
    """A 2-D blob image and an inverted copy of it turned by ``deg`` about the grid centre and shifted
    (world mm, 1 mm voxels): returns (fixed, moving, affine, the true fixed->moving 3x3)."""
    centres = [(64, 72), (40, 96), (88, 44), (32, 32), (100, 108)]
    fixed = _blobs(shape, centres, sigma=8.0)
    a = np.radians(deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = (np.array(shape) - 1) / 2
    true = np.eye(3)
    true[:2, :2], true[:2, 2] = rot, c - rot @ c + np.asarray(shift)
    inv = np.linalg.inv(true)  # moving voxel y shows the fixed object at inv(y)
    yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    src = inv[:2, :2] @ np.stack([yy.ravel(), xx.ravel()]) + inv[:2, 2:3]
    moving = torch.zeros(shape)
    for k, (cy, cx) in enumerate(centres):
        d2 = (src[0] - cy) ** 2 + (src[1] - cx) ** 2
        moving += torch.as_tensor((1.0 - 0.15 * k) * np.exp(-d2 / (2 * 64.0)), dtype=torch.float32).view(shape)
    return fixed, 1.0 - moving / moving.max(), np.eye(4), true


def test_mi_affine_recovers_a_turn_across_an_inverted_contrast():
    """Intensity MI finds a 12-degree turn and a shift of an inverted-contrast copy started from the
    identity (and stays at the truth when started there); with no iterations, or on a grid too small
    for its histogram, it returns its start."""
    from unireg.align.affine import mi_affine

    fixed, moving, a, true = _turned_pair(12.0, (2.0, -3.0))
    fixed = fixed / fixed.max()
    kw = {"points": 4000, "bins": 16}
    got = mi_affine(fixed, a, moving, a, np.eye(3), levels=((2, 60), (1, 40)), lr=0.02, **kw)
    centre = np.array([63.5, 71.5])
    turn = np.degrees(np.arctan2(got[1, 0], got[0, 0]))
    assert abs(turn - 12.0) < 1.0, got
    assert np.linalg.norm(got[:2, :2] @ centre + got[:2, 2] - (true[:2, :2] @ centre + true[:2, 2])) < 0.6, got
    stay = mi_affine(fixed, a, moving, a, true, levels=((1, 30),), lr=0.005, **kw)
    grid = np.argwhere(fixed.numpy() > 0.2).T.astype(np.float64)  # the object's voxels
    drift = np.linalg.norm((stay - true)[:2, :2] @ grid + (stay - true)[:2, 2:3], axis=0)
    assert drift.mean() < 0.5, (drift.mean(), stay)
    assert np.array_equal(mi_affine(fixed, a, moving, a, true, levels=((1, 0),)), true)
    small = mi_affine(fixed[::4, ::4], a, moving[::4, ::4], a, np.eye(3), levels=((1, 40),), lr=0.02, **kw)
    assert np.array_equal(small, np.eye(3))  # 32 x 36 voxels: under 8 per bin of a 16 x 16 histogram


def test_mi_affine_averages_its_last_steps_and_lands_closer():
    """``average``: the answer is the mean of the parameters over the last steps (Polyak averaging), not the
    last step's jittering point: from a start 0.6 mm off, a noisy inverted copy, rigid, a step size that
    jitters; the averaged answer is nearer the true map than the last iterate (and a different matrix)."""
    from unireg.align.affine import mi_affine

    fixed, moving, a, true = _turned_pair(4.0, (1.0, -0.5))
    fixed = fixed / fixed.max()
    g = torch.Generator().manual_seed(3)
    moving = (moving + 0.08 * torch.randn(moving.shape, generator=g)).clamp(0, 1)
    start = true.copy()
    start[:2, 2] += (0.5, -0.3)
    grid = np.argwhere(fixed.numpy() > 0.2).T.astype(np.float64)

    def error(m):
        return np.linalg.norm((m - true)[:2, :2] @ grid + (m - true)[:2, 2:3], axis=0).mean()

    kw = {"levels": ((1, 40),), "lr": 0.01, "points": 3000, "bins": 16, "rigid": True}
    last = mi_affine(fixed, a, moving, a, start, **kw)
    mean = mi_affine(fixed, a, moving, a, start, average=0.5, **kw)
    assert not np.allclose(mean, last)
    assert error(mean) < error(last), (error(mean), error(last))
    assert np.allclose(mean[:2, :2] @ mean[:2, :2].T, np.eye(2), atol=1e-9)  # the mean of rigid parameters is rigid


def test_affine_stage_keeps_its_mi_refinement_only_if_the_referee_prefers_it(monkeypatch):
    """The stage's intensity-MI step proposes, the do-no-harm referee decides: on a shifted phantom in
    another contrast the real refinement is kept (and said to be) and ends within 0.5 mm of the shift;
    a proposal 6 mm off is refused, which leaves the feature search's own affine, as with the step off."""
    from unireg import api
    from unireg.stages import affine as affine_stage

    from ..synthetic_pairs import tiny_registrar

    f, m, fa, shift = _shifted_phantom()
    m = (1.2 - m / m.max()) * (m > 0.01)  # another contrast inside the object

    def run():
        r = api.register((f, fa), (m, fa), model=tiny_registrar(3, 1.5), refine=0, qc=False)
        return np.asarray(r.affine_matrix, float), r.report["stages"]["affine"]

    kept, rec = run()
    assert rec["kept"] and "refined by intensity MI" in rec["reason"], rec
    assert np.linalg.norm(kept[:3, 3] - shift) < 0.5, kept
    real = affine_stage.mi_affine

    def off_by_6mm(*args, **kw):
        out = real(*args, **kw)
        out[:3, 3] += [6.0, 0.0, 0.0]
        return out

    monkeypatch.setattr(affine_stage, "mi_affine", off_by_6mm)
    refused, rec = run()
    assert rec["kept"] and "intensity-MI refinement not kept" in rec["reason"], rec
    # the feature search alone: a contrast-fooled scale (1.09 here) that the kept MI step had corrected
    assert np.linalg.norm(refused[:3, 3] - shift) > np.linalg.norm(kept[:3, 3] - shift) + 0.3, (refused, kept)
    monkeypatch.setitem(affine_stage.MI_LEVELS, 3, ())
    off, _ = run()
    assert np.allclose(refused, off), (refused, off)


def test_affine_stage_mi_restart_in_a_worker_thread_gives_the_in_line_result(monkeypatch):
    """The MI restart's coarse run goes to a worker thread beside the answer's own MI run (two CPU
    threads or more): both runs draw from their own seeded generators, so the affine is bitwise the
    one the same steps give one after the other."""
    from unireg import api
    from unireg.stages import affine as affine_stage

    from ..synthetic_pairs import tiny_registrar

    f, m, fa, _ = _shifted_phantom()
    m = (1.2 - m / m.max()) * (m > 0.01)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the worker path even on a one-core runner
    monkeypatch.setitem(affine_stage.MI_RESTART_MM, 3, 0.5)  # the small phantom's starts lie within 8 mm
    calls = spy_on(monkeypatch, affine_stage, "mi_affine", lambda *a, **kw: kw["levels"])

    def run():
        r = api.register((f, fa), (m, fa), model=tiny_registrar(3, 1.5), refine=0, qc=False)
        return np.asarray(r.affine_matrix, float), r.report["stages"]["affine"]["reason"]

    threaded, why = run()
    assert len(calls) >= 2, (calls, why)  # the answer's MI run and the restart's coarse one
    monkeypatch.setattr(affine_stage, "MI_WORKER", False)
    in_line, why_in_line = run()
    assert np.array_equal(threaded, in_line) and why == why_in_line, (threaded, in_line, why, why_in_line)


def test_affine_stage_mi_foreground_setting_samples_mi_in_the_fixed_object_only(monkeypatch):
    """``stages.affine.MI_FOREGROUND`` (off by default) hands ``mi_affine`` the fixed object (working
    grid above the threshold) as its fixed mask; off, MI samples the whole box (no mask)."""
    from unireg import api
    from unireg.stages import affine as affine_stage

    from ..synthetic_pairs import tiny_registrar

    f, m, fa, _ = _shifted_phantom()
    masks = spy_on(monkeypatch, affine_stage, "mi_affine", lambda *a, **kw: kw["fixed_mask"])
    api.register((f, fa), (m, fa), model=tiny_registrar(3, 1.5), refine=0, qc=False)
    assert masks and all(k is None for k in masks), masks
    masks.clear()
    monkeypatch.setattr(affine_stage, "MI_FOREGROUND", 0.05)
    api.register((f, fa), (m, fa), model=tiny_registrar(3, 1.5), refine=0, qc=False)
    share = float(masks[0].float().mean())
    assert masks[0].dim() == 3 and 0.02 < share < 0.9, share


def test_rigid_parameterisation_keeps_a_rotation_and_finds_the_turn():
    """rigid=True: intensity MI and the feature optimiser move a rigid start by a rotation and a translation
    only (orthonormal, determinant 1, to rounding) and still find a 12-degree turn and a shift; the affine
    parameterisation, on the same pair, leaves the rotations (the test would pass without the flag otherwise)."""
    from unireg.align.affine import mi_affine

    fixed, moving, a, true = _turned_pair(12.0, (2.0, -3.0))
    fixed = fixed / fixed.max()
    kw = {"points": 4000, "bins": 16, "levels": ((2, 60), (1, 40)), "lr": 0.02}
    got = mi_affine(fixed, a, moving, a, np.eye(3), rigid=True, **kw)
    lin = got[:2, :2]
    assert np.allclose(lin @ lin.T, np.eye(2), atol=1e-9) and abs(np.linalg.det(lin) - 1.0) < 1e-9, got
    assert abs(np.degrees(np.arctan2(got[1, 0], got[0, 0])) - 12.0) < 1.0, got
    centre = np.array([63.5, 71.5])
    assert np.linalg.norm(got[:2, :2] @ centre + got[:2, 2] - (true[:2, :2] @ centre + true[:2, 2])) < 0.6, got
    free = mi_affine(fixed, a, moving, a, np.eye(3), **kw)[:2, :2]
    assert np.abs(free @ free.T - np.eye(2)).max() > 1e-4, free
    mind = create_extractor("mind", 2)
    with torch.no_grad():
        ff, fm = mind(fixed[None, None]), mind(moving[None, None])
    starts = np.stack([np.eye(3), true])  # side by side, each stays rigid
    for t in optimize_affine(ff, a, fm, a, starts, levels=((2, 20), (1, 10)), rigid=True):
        assert np.allclose(t[:2, :2] @ t[:2, :2].T, np.eye(2), atol=1e-9), t


def _turn(axis: int, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(a)
    r[i, j], r[j, i] = -np.sin(a), np.sin(a)
    return r


def test_principal_axes_starts_turn_the_objects_axes_onto_each_other():
    """An elongated, lopsided box turned by 150 degrees about one axis and 70 about another (and shifted)
    in the world: one of the four starts is the true map to the voxel's rounding, each is a proper rotation
    taking the fixed centroid onto the moving one, and no other is near the truth (they are the axes'
    other signs).  A 2-D pair gets two; an empty mask none."""
    from unireg.align.affine import principal_axes_starts

    box = torch.zeros(48, 40, 32)
    box[6:42, 12:28, 10:22] = 1.0  # 36 x 16 x 12 voxels of 2 mm
    box[6:14, 12:20, 10:22] = 0.0  # a notch: the axes differ in length, the object is lopsided
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    rot = _turn(2, 150.0) @ _turn(0, 70.0)
    true = np.eye(4)  # fixed world -> moving world: the moving box is the fixed one carried by ``true``
    true[:3, :3], true[:3, 3] = rot, [20.0, -15.0, 8.0]
    starts = principal_axes_starts(box, grid, box, true @ grid)  # the same voxels, seen through ``true``
    assert len(starts) == 4
    errs = []
    for m in starts:
        assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-9) and np.linalg.det(m[:3, :3]) > 0.999
        errs.append(np.degrees(np.arccos(np.clip((np.trace(m[:3, :3].T @ rot) - 1) / 2, -1, 1))))
    best = starts[int(np.argmin(errs))]
    assert sorted(errs)[0] < 0.5 and sorted(errs)[1] > 90.0, errs
    centroid = np.array([47.6, 39.2, 31.0])  # any fixed point: the best start carries it where the truth does
    assert np.linalg.norm(best[:3, :3] @ centroid + best[:3, 3] - (rot @ centroid + true[:3, 3])) < 0.5, best
    assert len(principal_axes_starts(box[:, :, 16], grid, box[:, :, 16], grid)) == 2
    assert principal_axes_starts(torch.zeros_like(box), grid, box, grid) == []
