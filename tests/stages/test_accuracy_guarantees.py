"""Issue #10's guarantees, on real anatomy (the MNI T1 from nilearn's wheel):

* an already-aligned pair in another contrast keeps GM/WM Dice at least as high as ANTs SyN keeps it
  (0.958 in 3-D at 1 mm, 0.948 on a 2-D slice: measured with antspyx SyN-MI, shared/MEASURED.md);
* the affine stage refuses an affine that makes the pair worse (do-no-harm);
* the native-resolution level lowers the residual below what the 4 mm refinement alone reaches on a
  deformation finer than the working grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unireg import api
from unireg.data.mni import load_mni
from unireg.data.synth import add_noise, bias_field, remap_contrast
from unireg.evaluation.metrics import dice
from unireg.io.image import Image
from unireg.spatial.grid import resize_field, warp
from unireg.spatial.integrate import integrate_velocity
from unireg.stages import affine as affine_stage

ANTS_ALIGNED_DICE = {3: 0.958, 2: 0.948}


def _t2_copy(t1: np.ndarray, seed: int = 0) -> np.ndarray:
    img = remap_contrast(torch.from_numpy(t1), "t2") * bias_field(t1.shape, 0.2, seed)
    return add_noise(img, 0.02, seed).clamp_min(0).numpy().astype(np.float32)


def _gm_wm(fixed_lab: np.ndarray, warped_lab: np.ndarray) -> float:
    d = dice(fixed_lab, warped_lab)
    return float(np.mean([d[1], d[2]]))


@pytest.mark.parametrize("nd", [2, 3])
def test_aligned_pair_in_another_contrast_keeps_dice(nd):
    mni = load_mni(None)
    t1, lab, aff = mni["t1"].data[0], mni["labels"].data[0], mni["t1"].affine
    if nd == 2:
        t1, lab = t1[:, :, 80], lab[:, :, 80]
    res = api.register((t1, aff), (_t2_copy(t1), aff), labels=Image(lab[None], aff, None), qc=False)
    kept = _gm_wm(lab, res.warped_labels.data[0])
    assert kept >= ANTS_ALIGNED_DICE[nd], (kept, res.report["stages"])
    assert res.report["folded_percent"] < 0.05
    # do no harm: the gate (the feature cost, then the NMI referee) sees that nothing the stages found
    # beats the input, so the pair stays as it came (no pair ends below "no registration")
    assert kept >= 0.995, (kept, res.report["stages"])
    reason = res.report["stages"]["deformable"]["reason"]
    assert "NMI" in reason or "no improvement" in reason, reason


def test_the_referee_refuses_an_affine_the_feature_cost_was_fooled_by(monkeypatch):
    """A planted feature cost that calls every optimised affine perfect (as MIND can be fooled by a
    contrast): the NMI referee still keeps the identity of an aligned pair."""
    mni = load_mni(2.0)
    t1, aff = mni["t1"].data[0][:, :, 40], mni["t1"].affine
    bad = np.eye(3)
    bad[:2, 2] = [4.0, -3.0]
    real_cost = affine_stage.affine_cost

    def fooled(ff, fg, fm, mg, m, weight=None):
        c, o = real_cost(ff, fg, fm, mg, m, weight)
        return (c if np.allclose(m, np.eye(3)) else 0.0), o

    # every start (one matrix, or a stack of screened starts) ends at the planted bad affine
    monkeypatch.setattr(affine_stage, "optimize_affine", lambda *a, **k: np.broadcast_to(bad, np.shape(a[4])).copy())
    monkeypatch.setattr(affine_stage, "affine_cost", fooled)
    res = api.register((t1, aff), (_t2_copy(t1), aff), refine=0, qc=False)
    rec = res.report["stages"]["affine"]
    assert rec["kept"] is False and "referee disagrees" in rec["reason"], rec
    assert np.allclose(res.affine_matrix, np.eye(4))


def test_affine_stage_refuses_a_bad_affine(monkeypatch):
    """A planted optimiser that returns a 25-degree, 15 mm affine: the stage keeps the identity."""
    mni = load_mni(2.0)
    t1, aff = mni["t1"].data[0][:, :, 40], mni["t1"].affine
    bad = np.eye(3)
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    bad[:2, :2] = [[c, -s], [s, c]]
    bad[:2, 2] = [15.0, -10.0]
    # every start (one matrix, or a stack of screened starts) ends at the planted bad affine
    monkeypatch.setattr(affine_stage, "optimize_affine", lambda *a, **k: np.broadcast_to(bad, np.shape(a[4])).copy())
    res = api.register((t1, aff), (_t2_copy(t1), aff), refine=0, qc=False)
    rec = res.report["stages"]["affine"]
    assert rec["kept"] is False and "identity kept" in rec["reason"]
    assert np.allclose(res.affine_matrix, np.eye(4))
    # and without the planted bug the same pair keeps an affine near the identity
    monkeypatch.undo()
    res = api.register((t1, aff), (_t2_copy(t1), aff), refine=0, qc=False)
    assert np.abs(res.affine_matrix[:2, 3]).max() < 2.0


def test_native_level_beats_the_coarse_refinement_on_fine_deformations(monkeypatch):
    """A 1 mm crop of the MNI T1 deformed by a field of 5 mm correlation length (finer than the 2 mm
    working grid): end-point error inside the head, default levels vs the coarse (4 mm) level alone."""
    mni = load_mni(None)
    t1 = mni["t1"].data[0][50:146, 60:172, 60:140].copy()
    aff = mni["t1"].affine.copy()
    aff[:3, 3] += aff[:3, :3] @ np.array([50, 60, 60])
    rng = np.random.default_rng(3)
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(t1.shape), 5.0) for _ in range(3)])
    v = torch.from_numpy(v[None]).float()
    v = v * (4.0 / integrate_velocity(v).norm(dim=1).max())
    fwd, inv = integrate_velocity(v), integrate_velocity(-v)
    moving = warp(torch.from_numpy(t1)[None, None], inv)[0, 0].numpy()
    inside = t1 > 0.2
    true = fwd[0].numpy()  # voxels = mm (1 mm, axis-aligned)

    def epe(**kw):
        # the levels themselves (no referee), at the regularisation a fine deformation calls for:
        # smoothness 0.25 (the 3-D default weighs the regulariser for whole-head fields, 4x heavier)
        res = api.register((t1, aff), (moving, aff), affine=False, qc=False, do_no_harm=False, smoothness=0.25, **kw)
        return float(np.linalg.norm(res.warp_mm - true, axis=0)[inside].mean())

    before = float(np.linalg.norm(true, axis=0)[inside].mean())
    native = epe()
    # the coarse (4 mm) level alone: --fast's schedule without its native level
    from unireg.align import refine as refine_mod
    from unireg.stages import deformable

    def coarse_only(iterations=None, fast=False, native=True, *, ndim):
        return refine_mod.schedule(iterations, fast, False, ndim=ndim)

    monkeypatch.setattr(deformable, "schedule", coarse_only)
    coarse = epe(fast=True, refine=80)
    # measured: before 0.806 mm, coarse alone 1.20, default levels 0.572 (0.543 with the features
    # compared on grid points, before refine.UNBIASED_SAMPLING: on this noise-free pair that bias
    # costs nothing, on the noisy held-out suite it moved aligned regions; the suite's EPE fell 3-5 %)
    assert native < 0.85 * coarse and native < 0.75 * before, (before, coarse, native)


def test_affine_stage_finds_a_rotated_scaled_shifted_phantom_in_a_noisy_field_of_view():
    """The frozen suite's 2-D affine pair on a label phantom (rotation -14 deg, scale 0.91, 16/11 mm,
    T2-like, noisy oblique field of view): every raw start scores worse than the identity, so the
    stage needs its Otsu-centroid starts and the beam search (before them: EPE 21 mm, Dice 0.20)."""
    from unireg.evaluation.suite import cases
    from unireg.evaluation.suite.scoring import score_map

    spec = next(s for s in cases.case_list((2,), 5, ["affine"]) if s.anatomy == "labels" and s.grid == "oblique")
    case = cases.build_case(spec)
    res = api.register(case["fixed"], case["moving"], refine=0, qc=False)
    got = score_map(case, np.asarray(res.warp_mm).reshape(case["true_warp_mm"].shape))
    assert got["epe_mm"] < 3.0 and got["dice"] > 0.85, (got, res.report["stages"]["affine"])


def test_the_ct_like_whole_head_pair_of_the_suite_ends_above_no_registration():
    """The frozen suite's 3-D CT-like MNI pair (radial expansion, cropped field of view): grey and white
    matter 0.04 apart, so a weakly regularised 1 mm refinement fits noise at their boundary.  With the
    refinement's 3-D weight at the training loss's (0.5) it ended at Dice 0.865 < 0.875 unregistered
    while its EPE fell; now it must end above no registration, with its EPE lower too."""
    from unireg.evaluation.suite import cases
    from unireg.evaluation.suite.scoring import score_map

    spec = next(s for s in cases.case_list((3,), 2, ["radial"]) if s.intensity == "ct")
    case = cases.build_case(spec)
    res = api.register(case["fixed"], case["moving"], qc=False)
    none = score_map(case, np.zeros_like(case["true_warp_mm"]))
    got = score_map(case, np.asarray(res.warp_mm).reshape(case["true_warp_mm"].shape))
    assert got["dice"] > none["dice"] + 0.005 and got["epe_mm"] < 0.75 * none["epe_mm"], (
        none,
        got,
        res.report["stages"],
    )


def _suite_affine_alone(name: str, pairs: int, nd: int = 3) -> tuple[float, dict]:
    """The affine stage's mean distance (mm) from the true map inside the object of the frozen suite's
    ``nd``-D affine pair ``name`` (index below ``pairs``), and the stage's report record."""
    from unireg.evaluation.suite import cases
    from unireg.spatial.frames import affine_nd

    spec = next(s for s in cases.case_list((nd,), pairs, ["affine"]) if s.name == name)
    case = cases.build_case(spec)
    res = api.register(case["fixed"], case["moving"], refine=0, qc=False)
    f_aff, inside = affine_nd(np.asarray(case["fixed"][1], dtype=np.float64), nd), case["mask"]
    pts = np.argwhere(inside) @ f_aff[:nd, :nd].T + f_aff[:nd, nd]
    true = np.stack([case["true_warp_mm"][k][inside] for k in range(nd)], 1)
    m = affine_nd(np.asarray(res.affine_matrix, dtype=np.float64), nd)
    err = np.linalg.norm(pts @ m[:nd, :nd].T + m[:nd, nd] - pts - true, axis=1).mean()
    return float(err), res.report["stages"]["affine"]


def test_the_affine_stage_finds_a_tilt_the_feature_cost_pulls_flat():
    """The frozen suite's 3-D affine pair on a body phantom (turned by 11 and 12.6 degrees about two
    axes, gamma contrast, oblique field of view).  MIND compares self-similarities along the grid's
    axes, so the feature cost's optimum, even started at the true affine, kept only ~3 degrees of the
    turn: the affine alone ended 4.8 mm from the true map inside the body (the least-squares affine of
    the true map: 2.2 mm).  The stage's intensity-MI refinement, which the referee keeps, brings it
    to 3.0 mm.  With ``MI_LEVELS[3] = ()`` this test fails (checked)."""
    err, rec = _suite_affine_alone("3d_affine_06_body_gamma_oblique", 7)
    assert err < 3.5, (err, rec)
    assert rec["kept"] and "refined by intensity MI" in rec["reason"], rec


def test_the_affine_stage_refines_the_start_the_referee_prefers_when_the_search_left_it():
    """The frozen suite's 3-D affine pair 09: a T2-like body phantom on 1x1x3 mm slices, turned by 29.5
    degrees about the slice axis.  The feature cost's optimum lies 17 mm from the true map, even when
    the optimiser starts at the true affine; the search ended there (14.4 mm after its MI refinement).
    The referee scores the matching 30-degree start above that answer, and MI from that start ends
    3.4 mm from the true map (the least-squares affine of the true map: 1.8 mm).  With
    ``stages.affine.MI_RESTART = False`` this test fails (checked)."""
    err, rec = _suite_affine_alone("3d_affine_09_body_t2_aniso", 10)
    assert err < 5.0, (err, rec)
    assert rec["kept"] and "refined by intensity MI from" in rec["reason"], rec


def test_the_mi_restart_follows_the_start_the_referee_prefers_past_a_poor_coarse_step():
    """The suite's 3-D affine pair 12 (drawn fresh in session 24, never tuned to): a body phantom turned
    by 29 degrees in a CT-like contrast whose air is brighter than the body, partly outside the moving
    field of view.  The feature cost prefers a wrong answer (0.099 against 0.135 at the true affine,
    13.6 mm from it after MI); the referee's favourite far start lies 4.9 mm from the true affine, but
    MI's coarse level took it to 5.6 mm, where the referee scored it below the answer, and it was
    dropped.  Going on to MI's finer level whenever the referee prefers the start itself ends ~3 mm
    from the true map.  With ``stages.affine.RESTART_BY_START = False`` this test fails (checked)."""
    err, rec = _suite_affine_alone("3d_affine_12_body_ct_native", 13)
    assert err < 5.0, (err, rec)
    assert rec["kept"] and "refined by intensity MI from" in rec["reason"], rec


def test_the_affine_stage_finds_a_turn_about_an_oblique_axis():
    """The suite's 3-D affine pair 14 (drawn fresh in session 24): a label phantom turned by 30 degrees
    about an oblique axis (and scaled by 0.92-1.10) under an inverted contrast.  Every start turned
    about one coordinate axis lay 11-15 mm from the true map, where NMI is flat, and the affine was
    refused (13 mm from the true map, Dice 0.41).  A start turned about a diagonal, refined by MI, ends
    ~0.5 mm from it.  With ``stages.affine.OBLIQUE_STARTS = False`` this test fails (checked)."""
    err, rec = _suite_affine_alone("3d_affine_14_labels_inverted_oblique", 15)
    assert err < 3.0, (err, rec)
    assert rec["kept"], rec


def test_a_refused_far_affine_gets_a_second_opinion_from_intensity_mi():
    """The suite's 2-D affine pair 71 (drawn fresh in session 24, never tuned to): a label phantom under
    a random piecewise-linear contrast whose background lands at the objects' own level, cropped, and
    moved by a large affine.  The feature search's answer (from a turned start) is wrong and the
    referee refuses it (NMI 1.0136 -> 1.0150 from the fixed image, 1.0144 -> 1.0128 from the moving
    one), which left the pair unregistered (Dice 0.42, ANTs SyN 0.89).  2-D has no MI step
    (``MI_LEVELS[2]``), so a refused answer that moves the object far now gets intensity MI from it
    and from the referee's favourite far start: the affine alone then ends ~1 mm from the true map
    (unrescued: 11 mm).  With ``stages.affine.RESCUE_LEVELS[2] = ()`` this test fails (checked)."""
    err, rec = _suite_affine_alone("2d_affine_71_labels_piecewise_crop", 72, nd=2)
    assert err < 2.5, (err, rec)
    assert rec["kept"] and "rescued by intensity MI" in rec["reason"], rec


@pytest.mark.parametrize("degrees", [90.0, -135.0])
def test_affine_stage_finds_a_slice_turned_far_in_its_plane(degrees):
    """A 2-D MNI slice against a T2-like copy of itself turned in the plane (and shifted): MIND compares
    self-similarities along the grid's axes, so the moving features must be taken in the frame of each
    rotation start.  Before that (features of the moving image as it lies) a 90-degree turn ended at
    GM/WM Dice 0.58 and a 135-degree one at 0.40, although starts at those angles were tried."""
    mni = load_mni(1.0)
    k = mni["t1"].data.shape[-1] // 2
    t1 = np.ascontiguousarray(mni["t1"].data[0][:, :, k], dtype=np.float32)
    lab = np.ascontiguousarray(mni["labels"].data[0][:, :, k])
    a, c = np.radians(degrees), np.array([(n - 1) / 2 for n in t1.shape])
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    turn[:2, 3] = c - turn[:2, :2] @ c + [6.0, -4.0]  # the same array seen turned and shifted in the world
    res = api.register((t1, np.eye(4)), (_t2_copy(t1[..., None])[..., 0], turn), labels=(lab, turn), refine=0, qc=False)
    assert res.report["stages"]["affine"]["kept"], res.report["stages"]["affine"]
    assert _gm_wm(lab, res.warped_labels.data[0]) > 0.95, res.report["stages"]["affine"]


@pytest.mark.parametrize("axis, degrees", [(2, 180.0), (0, -100.0)])
def test_affine_stage_finds_a_head_stored_far_off(axis, degrees):
    """The 2 mm MNI head against a T2-like copy whose header turns it by 180 degrees about the vertical axis
    (a head lying the other way round) or by -100 degrees about the left-right one: beyond every rotation
    start (+-30 degrees), and MIND, which compares self-similarities along the grid's axes, matches such a
    turn nowhere: the stage kept the identity (180) or a half-turned answer.  The search from the principal-axes
    starts, each seen in its own frame, finds it; with ``stages.affine.PRINCIPAL_AXES_STARTS[3] = False`` or
    ``FRAMED_TURN = 360`` (no frames) both cases fail (checked)."""
    mni = load_mni(2.0)
    t1, aff = mni["t1"].data[0], mni["t1"].affine
    c = aff[:3, :3] @ ((np.array(t1.shape) - 1) / 2) + aff[:3, 3]
    a = np.radians(degrees)
    i, j = [k for k in range(3) if k != axis]
    turn = np.eye(4)
    turn[i, i] = turn[j, j] = np.cos(a)
    turn[i, j], turn[j, i] = -np.sin(a), np.sin(a)
    turn[:3, 3] = c - turn[:3, :3] @ c + [5.0, -3.0, 4.0]  # fixed world -> moving world
    res = api.register((t1, aff), (_t2_copy(t1), turn @ aff), transform="rigid", qc=False)
    rec = res.report["stages"]["affine"]
    assert rec["kept"] and "principal axes" in rec["reason"], rec
    m = np.asarray(res.affine_matrix)
    miss = np.linalg.norm(m[:3, :3] @ c + m[:3, 3] - (turn[:3, :3] @ c + turn[:3, 3]))
    err = np.degrees(np.arccos(np.clip((np.trace(m[:3, :3].T @ turn[:3, :3]) - 1) / 2, -1, 1)))
    assert err < 2.0 and miss < 2.0, (err, miss, rec)


def test_the_far_turn_search_leaves_a_near_symmetric_phantom_right():
    """The frozen suite's 3-D affine pair 00: a body phantom (near-symmetric under half turns) in an inverted
    contrast.  With the principal-axes starts as four more starts of the main search, a start turned by 180
    degrees scored best in its own frame, its answer was refused and the pair stayed unregistered (the affine
    15.7 mm from the true map, Dice 0.954 -> 0.622 in the held-out suite).  Searched only where the answer
    disagrees with the axes, and put to the referee, the stage's answer stays ~2.2 mm from the true map."""
    err, rec = _suite_affine_alone("3d_affine_00_body_inverted_native", 1)
    assert err < 3.0, (err, rec)
    assert rec["kept"] and "principal axes" not in rec["reason"], rec


def test_an_affine_that_brings_the_object_into_view_is_kept():
    """The moving slice's world coordinates 230 mm away from the fixed one's (another scanner's or
    program's origin): through the identity no fixed structure lies inside the moving field of view,
    so the start's feature cost is zero on the points it sees, and an affine that finds the object
    was refused for not lowering it ("no improvement") and the pair flagged as failed.  ANTs' default
    starts from the centres of mass; here the centroid starts find it and the referee has the say."""
    mni = load_mni(1.0)
    k = mni["t1"].data.shape[-1] // 2
    t1 = np.ascontiguousarray(mni["t1"].data[0][:, :, k], dtype=np.float32)
    lab = np.ascontiguousarray(mni["labels"].data[0][:, :, k])
    far = np.eye(4)
    far[:2, 3] = [180.0, -140.0]
    res = api.register((t1, np.eye(4)), (_t2_copy(t1[..., None])[..., 0], far), labels=(lab, far), refine=0, qc=False)
    assert res.report["stages"]["affine"]["kept"], res.report["stages"]["affine"]
    assert _gm_wm(lab, res.warped_labels.data[0]) > 0.95, res.report["stages"]["affine"]


def test_the_local_gate_fades_motion_where_nothing_moved(monkeypatch):
    """The frozen suite's five 2-D radial pairs (one structure pushed outwards, the rest untouched; CT-,
    PD-, FLAIR-like and other contrasts): the feature cost also moves the untouched part (0.3-1.1 mm on
    average where the true map moves < 0.2 mm, and the CT-like crop pair was refused whole for it).  With
    the local gate every pair keeps its deformation, ends above no registration, and the untouched part
    moves less than half as much in all (measured: 1.21 mm summed over the five, 2.98 without the gate)."""
    from unireg.evaluation.suite import cases
    from unireg.evaluation.suite.scoring import score_map
    from unireg.stages import deformable

    def run():
        static_motion, gains, kept = [], [], []
        for spec in cases.case_list((2,), 5, ["radial"]):
            case = cases.build_case(spec)
            res = api.register(case["fixed"], case["moving"], qc=False)
            w = np.asarray(res.warp_mm).reshape(case["true_warp_mm"].shape)
            static = case["mask"] & (np.linalg.norm(case["true_warp_mm"], axis=0) < 0.2)
            static_motion.append(float(np.linalg.norm(w, axis=0)[static].mean()))
            gains.append(score_map(case, w)["dice"] - score_map(case, np.zeros_like(w))["dice"])
            kept.append(res.report["stages"]["deformable"]["kept"])
        return np.array(static_motion), np.array(gains), kept

    motion, gains, kept = run()
    monkeypatch.setattr(deformable, "LOCAL_GATE", False)
    motion_off, _, _ = run()
    assert all(kept) and (gains > 0).all(), (kept, gains)
    assert motion.sum() < 0.5 * motion_off.sum(), (motion, motion_off)


@pytest.mark.parametrize(
    "name, off",
    [("2d_aligned_32_body_pd_native", -1.0), ("2d_aligned_53_body_pd_aniso", -1.0),
     ("3d_aligned_05_body_flair_aniso", 0.0)],
)
def test_a_deformation_only_the_fixed_side_rewards_is_refused(name, off, monkeypatch):
    """Already-aligned pairs of the frozen suite (drawn after the gates were designed) on which the
    deformation raised NMI seen from the fixed image by more than the margin (2-D: +0.55 % whole, and
    +0.59 % trimmed by the local gate; 3-D on 1x1x3 mm slices: +0.57 % trimmed) and made the pair worse
    (Dice 1.000 -> 0.984 / 0.997, 0.953 -> 0.948).  Seen from the moving image through the inverse
    deformation the same maps lose NMI (-0.81 / -0.18 %) or gain less than the margin (+0.21 %), so
    the two-way referee refuses them and the pair stays as it came.  With the moving side's test
    loosened (``off``: any score passes, or any rise) the pair is made worse again: the test can fail.
    (Session 21: 2d_aligned_35_body_gamma_crop left this list.  Its deformation came from the moving
    image's cut, which the refinement no longer counts (``refine.FOV_AWARE``); what is left is refused
    from the fixed side already.  2d_aligned_53_body_pd_aniso, on 2x3 mm pixels, took its place: +0.97 %
    from the fixed side, +0.45 % from the moving one.)"""
    from unireg.evaluation.suite import cases
    from unireg.evaluation.suite.scoring import score_map
    from unireg.stages import deformable

    nd = int(name[0])
    spec = next(s for s in cases.case_list((nd,), 6 if nd == 3 else 60, ["aligned"]) if s.name == name)
    case = cases.build_case(spec)

    def dice_after():
        res = api.register(case["fixed"], case["moving"], qc=False)
        w = np.asarray(res.warp_mm).reshape(case["true_warp_mm"].shape)
        return score_map(case, w)["dice"], res.report["stages"]["deformable"]

    none = score_map(case, np.zeros_like(case["true_warp_mm"]))["dice"]
    dice_now, rec = dice_after()
    assert dice_now >= none - 1e-6, rec
    assert rec["kept"] is False and "seen from the moving image" in rec["reason"], rec
    monkeypatch.setattr(deformable, "INVERSE_MARGIN", off)
    dice_off, rec_off = dice_after()
    assert rec_off["kept"] and dice_off < none - 1e-3, (dice_off, none, rec_off)


def test_an_aligned_thick_slice_pair_is_not_moved_by_a_sub_voxel_affine():
    """The frozen suite's 2-D aligned pair 53: a PD-like body phantom against its copy on 2x3 mm pixels.
    The affine search found a 1.4 % stretch (0.57 mm over the body) that raised NMI by 0.24 % seen from
    the fixed image and 0.05 % from the moving one, and ended the pair below no registration (Dice
    0.943 -> 0.938).  A change smaller than half the coarser image's voxel must now raise NMI by the
    deformations' margin from both sides (``stages.affine.SUBVOXEL_AFFINE``): the pair stays as it came.
    With ``SUBVOXEL_AFFINE = None`` this test fails (checked)."""
    from unireg.evaluation.suite import cases
    from unireg.evaluation.suite.scoring import score_map

    spec = next(s for s in cases.case_list((2,), 54, ["aligned"]) if s.name == "2d_aligned_53_body_pd_aniso")
    case = cases.build_case(spec)
    res = api.register(case["fixed"], case["moving"], qc=False)
    rec = res.report["stages"]["affine"]
    none = score_map(case, np.zeros_like(case["true_warp_mm"]))
    got = score_map(case, np.asarray(res.warp_mm).reshape(case["true_warp_mm"].shape))
    assert not rec["kept"] and "sub-voxel change" in rec["reason"], rec
    assert got["dice"] >= none["dice"] - 1e-4 and got["epe_mm"] < 0.1, (none, got, res.report["stages"])
