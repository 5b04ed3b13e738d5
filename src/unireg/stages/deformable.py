"""Stages ``features``, ``network``, ``refine``, ``integrate``, ``deformable_gate`` and ``polish``.

The network gives the start, instance optimisation on frozen MIND features gives the accuracy
(coarse -> working -> native resolution, :mod:`unireg.align.refine`), and both stay diffeomorphic.
Do-no-harm: the network's velocity is kept only if it lowers the coarse feature cost below the zero
velocity's, and the deformable result only if it lowers the working-grid cost below the affine's
and the NMI referee (:mod:`unireg.align.referee`, native resolution, blind to the feature cost's
biases) scores it above the affine alone, seen from the fixed image and (through the inverse
deformation) from the moving one: an aligned pair stays as it came.  Then locally
(``local_gate``): the deformation is faded out in the patches where it does not raise NMI.  Last, on a
deformation the gate kept, the ``polish``: the finest level continued with the intensities' mutual
information beside the features (kept only if the feature cost and NMI agree).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..align import refine as refine_mod
from ..align.referee import INVERSE_MARGIN
from ..align.referee import MARGIN as REFEREE_MARGIN
from ..align.refine import mind_cost, pool_to, refine_multilevel, schedule
from ..features.mind import MIND, mind_ssc
from ..masks import mask_on_grid
from ..preprocess import to_working_grid
from ..spatial.jacobian import folding_stats, jacobian_determinant
from .prepare import fov_covers, moving_fov, moving_mask_on, moving_on, referee
from .state import State

__all__ = ["features", "network", "refine", "integrate", "deformable_gate", "polish", "none", "IMPROVEMENT"]

# The polish (stage ``polish``) is kept only if the working-grid feature cost rises by at most this share: a
# guard against a runaway fit to intensities, not a judge of small changes.  Session 25 had 1 %, from the
# 2-D suite's pairs (the cost moved by -4 % .. +0.3 % on the pairs the polish improved); on real anatomical
# differences (two MNI slices 3-5 mm apart, 12 pairs of a development draw, seed 777, apart from
# benchmarks/slice_pairs.py's frozen ones) polishes that raised GM/WM Dice raised the cost by up to 12 %
# (0.753 -> 0.839 at +12 %; at 1 % 3 of the 12 were refused: mean 0.840 against 0.859), and on the suite it
# moved by < 2 % on the pairs it helped and the pairs it hurt alike: the cost cannot tell them apart.
POLISH_TOLERANCE = 0.25
IMPROVEMENT = 1e-3  # relative feature-cost decrease a deformable stage must reach to be kept
# The control grid refines to the working grid for a small image (refine.FINE_CONTROL_VOXELS) judged by
# the working grid over the whole field of view (True), or by the grid cropped to the object (False: an
# EPI slab whose crop fell below the threshold lost 1-3 points on the finer control grid).
CONTROL_BY_FOV = True
# The local gate (local_gate): patch side per dimension (mm; a patch holds a few thousand of the
# referee's points) and the fewest points a patch needs to be judged.
LOCAL_GATE = True
LOCAL_RESCUE = True  # a deformation refused whole may be kept trimmed (deformable_gate)
LOCAL_PATCH_MM = {2: 16.0, 3: 24.0}
LOCAL_MIN_POINTS = 500
LOCAL_MARGIN = REFEREE_MARGIN  # the share by which a patch's NMI must rise: the global rule, locally
# Passes of the network (a recursive cascade, Registrar.predict) when it is the last word (`--refine 0`),
# per dimension.  1 mm MNI T1 vs held-out B-spline and radial deformations, network only, GM/WM Dice
# (experiments/validate_1mm.py, 1 pair per family): T2-like 0.866 / 0.885 / 0.893 / 0.896 with 1-4
# passes of the session-3 network; T1 0.891 -> 0.909 (1 -> 3).  With the refinement after it a
# second pass gains nothing (3-D held-out suite in-process, 10 pairs: Dice 0.928 with 1 pass, 0.927
# with 3), so the default keeps one.  The 2-D UNet is left at one pass (not measured).
NETWORK_ONLY_PASSES = {2: 1, 3: 3}
# ... and whether each pass is symmetrised (Registrar.predict(symmetric=True): the mean of the
# (fixed, moving) estimate and the negated (moving, fixed) one).  Same 1 mm pairs, network only,
# 3 passes, 1 pair per family: T1 0.927 -> 0.934, T2-like 0.902 -> 0.912, PD-like 0.899 -> 0.912,
# FLAIR-like 0.914 -> 0.915; T2-like on 3 pairs per family 0.902 -> 0.912 (ANTs SyN 0.936 on them)
# (experiments/results/validate_1mm_symmetric*.log).  2-D, held-out suite pairs 0-9 of each family
# in-process, network only: Dice 0.931 -> 0.930, EPE 1.03 -> 0.97 mm: left off.  The default (network,
# then refinement) keeps the one-way pass: the refinement decides its accuracy.
NETWORK_ONLY_SYMMETRIC = {2: False, 3: True}


def _network_only(s: State) -> bool:
    """True when nothing refines the network's output (``--refine 0``): it is the last word."""
    return not schedule(s.opts.refine, fast=s.opts.fast, native=s.opts.native and s.fine_factor > 1, ndim=s.nd)


def network_passes(s: State) -> int:
    if not s.model.trained:
        return 1
    return NETWORK_ONLY_PASSES[s.nd] if _network_only(s) else 1


def network_symmetric(s: State) -> bool:
    return bool(s.model.trained and _network_only(s) and NETWORK_ONLY_SYMMETRIC[s.nd])


def _fixed_mask(s: State, shape, aff4) -> torch.Tensor | None:
    """Where the similarity counts on a grid of the fixed frame, ``(1, 1, *shape)``: inside the fixed
    mask and inside the moving mask seen through the affine (the deformation's own share of the
    moving mask's motion is ignored: it is a few millimetres against the mask's extent)."""
    fixed, moving = s.opts.fixed_mask, s.opts.moving_mask
    if fixed is None and moving is None:
        return None
    m = torch.ones(tuple(shape), dtype=torch.bool)
    if fixed is not None:
        m &= mask_on_grid(fixed, shape, aff4)
    if moving is not None:
        m &= moving_mask_on(s, shape, aff4)
    return m.float()[None, None].to(s.device)


def features(s: State) -> None:
    s.announce("features")
    with s.timer("features"), torch.no_grad():
        s.ff = s.model.extract(s.fixed_w[None])
        s.fm = s.model.extract(s.moving_w[None])


def network(s: State) -> None:
    s.announce("network")
    with s.timer("network"), torch.no_grad():
        passes, symmetric = network_passes(s), network_symmetric(s)
        v = s.model.predict(s.ff, s.fm, s.opts.smoothness, passes=passes, symmetric=symmetric)
        if not s.model.trained:
            s.velocity = torch.zeros_like(v)
            s.keep("network", False, "untrained network: refinement starts from zero velocity")
            return
        cascade = f" ({passes} passes of the network)" if passes > 1 else ""
        cascade += " (symmetrised)" if symmetric else ""
        if not s.opts.do_no_harm:
            s.velocity = v
            s.keep("network", True, "do-no-harm check off" + cascade)
            return
        shape = v.shape[2:]
        ff = mind_ssc(pool_to(s.fixed_w[None], shape))
        fm = mind_ssc(pool_to(s.moving_w[None], shape))
        mask = _fixed_mask(s, shape, _grid_of(s, shape))
        c0 = mind_cost(ff, fm, None, mask)
        c1 = mind_cost(ff, fm, s.model.displacement(v, shape), mask)
        if c1 < c0 * (1 - IMPROVEMENT):
            s.velocity = v
            s.keep("network", True, f"coarse feature cost {c0:.4f} -> {c1:.4f}" + cascade)
        else:
            s.velocity = torch.zeros_like(v)
            s.keep(
                "network",
                False,
                f"coarse feature cost {c0:.4f} -> {c1:.4f}{cascade}: no improvement, zero velocity kept",
            )


def _grid_of(s: State, shape) -> np.ndarray:
    """The 4x4 affine of a grid with the working grid's corners and ``shape``."""
    nd = s.nd
    a = s.w_aff4.copy()
    for i in range(nd):
        f = (s.w_shape[i] - 1) / max(shape[i] - 1, 1)
        a[:3, i] = a[:3, i] * f
    return a


def refine(s: State) -> None:
    levels = schedule(s.opts.refine, fast=s.opts.fast, native=s.opts.native and s.fine_factor > 1, ndim=s.nd)
    s.refine_levels = [{"level": lv.name, "iterations": lv.iterations} for lv in levels]
    if not levels:
        s.keep("refine", False, "no refinement asked for (--refine 0)")
        return
    s.keep("refine", True, "levels: " + ", ".join(f"{lv.name} x{lv.iterations}" for lv in levels))

    def on_level(level):
        s.announce(f"refine {level.name}")

    with s.timer("refine"), torch.enable_grad():
        fine = None
        fine_mask = None
        if any(lv.name == "native" for lv in levels):
            fixed_f = to_working_grid(s.fixed_n, s.fixed.affine, s.fixed.spacing, s.f_shape, s.f_aff4)
            moving_f = moving_on(s, s.f_shape, s.f_aff4, s.t_nd)
            fine = (fixed_f[None].to(s.device), moving_f[None].to(s.device), float(s.fine_factor))
            fine_mask = _fixed_mask(s, s.f_shape, s.f_aff4)
        fov_w = fov_f = None
        if refine_mod.FOV_AWARE and not fov_covers(s):
            fov_w = moving_fov(s, s.w_shape, s.w_aff4)
            fov_f = None if fine is None else moving_fov(s, s.f_shape, s.f_aff4)
        s.velocity = refine_multilevel(
            s.velocity,
            s.fixed_w[None],
            s.moving_w[None],
            levels,
            smoothness=s.opts.smoothness,
            int_steps=s.model.int_steps,
            fine=fine,
            fixed_mask_w=_fixed_mask(s, s.w_shape, s.w_aff4),
            fixed_mask_fine=fine_mask,
            on_level=on_level,
            seed=s.opts.seed,
            moving_fov_w=fov_w,
            control_voxels=math.prod(s.fov_w_shape) if CONTROL_BY_FOV else None,
            moving_fov_fine=fov_f,
            keep_finest=(lambda f: setattr(s, "finest", f)) if not _polish_off(s) else (lambda f: None),
        )


def polish(s: State) -> None:
    """Stage ``polish``: the finest refinement level continued with the intensities' mutual information
    joining its feature cost (:func:`unireg.align.refine.polish`), from the deformation the gate kept.

    It runs only on a deformation the gate kept (never on an aligned pair's, never on none), its own
    motion faded out where the local gate faded the deformation, and it is kept only if it does not raise
    the working-grid feature cost by more than ``POLISH_TOLERANCE`` (MI must not run away from the local
    features) nor lower the NMI referee's score, seen from either image (do-no-harm: the intensities must
    agree more, not less)."""
    why = _polish_skipped(s)
    finest, s.finest = s.finest, None  # the finest level's images and features are freed after this stage
    if why or finest is None:
        s.keep("polish", False, why)
        return
    s.announce("polish")
    with s.timer("refine"), torch.enable_grad():
        v = refine_mod.polish(s.velocity, finest, iterations=s.opts.refine)  # --refine N: N here too
    del finest
    if s.gate_weight is not None:  # the polish's own motion faded where the local gate faded the deformation
        v = s.velocity + (v - s.velocity) * s.gate_weight
    with s.timer("integrate"), torch.no_grad():
        disp, inv = s.model.displacement(v, s.w_shape), s.model.displacement(-v, s.w_shape)
        what = "do-no-harm check off"
        if s.opts.do_no_harm:
            ff, fm = _working_mind(s)
            mask = _fixed_mask(s, s.w_shape, s.w_aff4)
            c0, c1 = mind_cost(ff, fm, s.disp_w, mask), mind_cost(ff, fm, disp, mask)
            what = f"working-grid feature cost {c0:.4f} -> {c1:.4f}"
            if not c1 <= c0 * (1 + POLISH_TOLERANCE):
                s.keep("polish", False, f"{what}: MI pulls against the features, the deformation before it kept")
                return
            judge = referee(s)
            n0, n1 = judge.score(s.t_nd, s.disp_w, s.w_aff4), judge.score(s.t_nd, disp, s.w_aff4)
            what += f"; NMI {n0:.4f} -> {n1:.4f}"
            back = referee(s, inverse=True)  # seen from the moving image too, as the deformable gate does
            b0, b1 = back.score(s.t_nd, s.inv_disp_w, s.w_aff4), back.score(s.t_nd, inv, s.w_aff4)
            what += f", seen from the moving image {b0:.4f} -> {b1:.4f}"
            if not (n1 >= n0 and b1 >= b0):
                s.keep("polish", False, f"{what}: no improvement, the deformation before it kept")
                return
        it = refine_mod.POLISH_ITERATIONS[s.nd] if s.opts.refine is None else s.opts.refine
        s.keep("polish", True, f"{it} iterations, MI weight {refine_mod.POLISH_WEIGHT[s.nd]:g}: {what}")
        s.velocity, s.disp_w, s.inv_disp_w = v, disp, inv
        s.jac_w = jacobian_determinant(s.disp_w)[0]
        s.fold = folding_stats(s.jac_w)


def _polish_off(s: State) -> str:
    """Why the polish is off for this run whatever the refinement does ('' when it is on): then the
    refinement does not keep its finest level's images and features (a 1 mm head's native MIND, ~0.8 GB,
    would otherwise stay alive through the integration and the gate)."""
    if s.opts.fast:
        return "not run with --fast"
    if refine_mod.POLISH_WEIGHT[s.nd] <= 0 or refine_mod.POLISH_ITERATIONS[s.nd] <= 0:
        return "off for this dimension"
    return ""


def _polish_skipped(s: State) -> str:
    """Why the polish does not run ('' when it does)."""
    off = _polish_off(s)
    if off:
        return off
    if s.finest is None:  # set by the refinement's working and native levels only
        return "no working or native refinement level to continue"
    if not s.stages.get("deformable", {}).get("kept"):
        return "the deformation was refused: nothing to polish"
    return ""


def integrate(s: State) -> None:
    s.announce("integrate")
    with s.timer("integrate"), torch.no_grad():
        s.disp_w = s.model.displacement(s.velocity, s.w_shape)
        s.inv_disp_w = s.model.displacement(-s.velocity, s.w_shape)


def none(s: State) -> None:
    """``--transform rigid|affine``: no deformation; the stages after it see a zero one (its Jacobian 1)."""
    zero = torch.zeros((1, s.nd, *s.w_shape), dtype=s.fixed_w.dtype, device=s.device)
    s.disp_w, s.inv_disp_w = zero, zero.clone()
    s.jac_w = jacobian_determinant(s.disp_w)[0]
    s.fold = folding_stats(s.jac_w)


def _working_mind(s: State) -> tuple[torch.Tensor, torch.Tensor]:
    """Default MIND-SSC of the working-grid images: the model's own features when its extractor is
    exactly that (the shipped models), computed here otherwise."""
    f = s.model.features
    if isinstance(f, MIND) and (f.radius, f.dilation) == (1, 2):
        return s.ff, s.fm
    return mind_ssc(s.fixed_w[None]), mind_ssc(s.moving_w[None])


def local_gate(s: State) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The deformation faded out wherever it does not raise the NMI of the patch around it.

    The feature cost can pull the parts of an image that nothing moved by half a voxel or more (a
    contrast whose MIND features disagree with the fixed image's near some boundaries, noise): that
    motion lowers the cost without raising NMI where it happens.  The local referee's points are cut
    into overlapping patches of ``LOCAL_PATCH_MM``; where a patch's NMI through the deformation is not
    above its NMI through the affine alone by ``LOCAL_MARGIN`` (the global rule, applied locally), the
    velocity is faded out, linearly between patch centres, so the result is still the exponential of
    a smooth velocity: diffeomorphic.  Returns ``(velocity, the fading weights on its grid, what it
    did)``, or None when there is nothing to trim (no velocity, no patch with enough points, every patch
    raised)."""
    if not LOCAL_GATE or not bool(s.velocity.abs().max() > 0):
        return None
    patch = LOCAL_PATCH_MM[s.nd]
    judge = referee(s, local=True)
    gain, counts = judge.local_gain(s.t_nd, s.disp_w, s.w_aff4, patch)
    scored = counts >= LOCAL_MIN_POINTS
    n = int(scored.sum())
    # a patch with too few points to judge keeps the deformation (the global gate still decides)
    keep = ((gain > LOCAL_MARGIN) | ~scored).float()
    kept = int((keep.bool() & scored).sum())
    if n == 0 or kept == n:
        return None
    vshape = tuple(s.velocity.shape[2:])
    w = judge.patch_weights_on(keep, patch, vshape, _grid_of(s, vshape))
    return s.velocity * w, w, f"kept in the {kept} of {n} patches of {patch:g} mm where it raises local NMI"


def deformable_gate(s: State) -> None:
    """Keep the deformation only if it lowers the working-grid feature cost below the affine's,
    raises NMI (the referee) by ``REFEREE_MARGIN`` and, seen from the moving image through the
    inverse deformation, by ``INVERSE_MARGIN`` (a map that reshapes one image's histogram instead of
    aligning it gains much less, or loses, seen from the other); then keep it only where it raises local NMI
    (:func:`local_gate`), when that trimmed deformation passes the same three tests and scores a higher
    NMI than the whole one (trimming must not take away motion that NMI saw as alignment).  A deformation the
    whole-image tests refuse is rescued by its trimmed version only if, whole, it raised NMI at all
    (``LOCAL_RESCUE``): the patches that raise NMI are chosen by NMI, so the trimmed version's gain
    alone would be biased upwards."""
    with s.timer("integrate"), torch.no_grad():
        if s.opts.do_no_harm:
            ff, fm = _working_mind(s)
            mask = _fixed_mask(s, s.w_shape, s.w_aff4)
            c0 = mind_cost(ff, fm, None, mask)

            def passes(disp, inv_disp) -> tuple[bool, float, str]:
                """(passes the three tests, its NMI or -inf when the feature cost already refuses it, what)"""
                c1 = mind_cost(ff, fm, disp, mask)
                what = f"working-grid feature cost {c0:.4f} -> {c1:.4f}"
                if not c1 < c0 * (1 - IMPROVEMENT):
                    return False, -math.inf, what
                judge = referee(s)  # built on first use; it keeps the affine's score
                n0, n1 = judge.score(s.t_nd), judge.score(s.t_nd, disp, s.w_aff4)
                what += f"; NMI {n0:.4f} -> {n1:.4f}"
                if not n1 > n0 * (1 + REFEREE_MARGIN):
                    return False, n1, what
                back = referee(s, inverse=True)  # the same map seen from the moving image
                b0, b1 = back.score(s.t_nd), back.score(s.t_nd, inv_disp, s.w_aff4)
                return b1 > b0 * (1 + INVERSE_MARGIN), n1, f"{what}, seen from the moving image {b0:.4f} -> {b1:.4f}"

            better, n_whole, what = passes(s.disp_w, s.inv_disp_w)
            raised = math.isfinite(n_whole) and n_whole > referee(s).score(s.t_nd)
            trimmed = local_gate(s) if (better or (raised and LOCAL_RESCUE)) else None
            if trimmed is not None:
                v, weight, how = trimmed
                disp, inv_disp = s.model.displacement(v, s.w_shape), s.model.displacement(-v, s.w_shape)
                ok, n_trim, what_t = passes(disp, inv_disp)
                if ok and n_trim > n_whole:  # trimming must raise NMI above the whole deformation's too
                    s.velocity, s.disp_w, s.inv_disp_w = v, disp, inv_disp
                    s.gate_weight = weight
                    what = f"{what}; {how}: {what_t}" if better else f"{what}: refused whole; {how}: {what_t}"
                    better = True
                else:
                    what += f"; {how}: {what_t}, not kept"
            if better:
                s.keep("deformable", True, what)
            else:
                s.keep(
                    "deformable",
                    False,
                    f"{what}: no improvement, affine only kept",
                )
                s.disp_w = torch.zeros_like(s.disp_w)
                s.inv_disp_w = torch.zeros_like(s.inv_disp_w)
        else:
            s.keep("deformable", True, "do-no-harm check off")
        s.jac_w = jacobian_determinant(s.disp_w)[0]
        s.fold = folding_stats(s.jac_w)
