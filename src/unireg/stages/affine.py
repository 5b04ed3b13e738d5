"""Stage ``affine``: several starts, one optimised affine, kept only if it beats its start (do-no-harm).

Starts: identity (or the user's ``--initial-transform``), the intensity centre of mass, the centroids
of two foreground masks (a fixed threshold and each image's Otsu threshold), and rotations of each
about the fixed centroid (large misalignments).  Each is scored at 8 mm (one feature comparison); the
best few get a few 8 mm optimiser steps (a beam search: a start at the edge of the basin scores badly
before it moves) and are ranked again; the best is optimised at 8 and 4 mm (a polish on the working
grid's features, ``POLISH_ITERATIONS``, is off by default); in 3-D it is then refined on the working
grids' intensities by mutual information (``MI_LEVELS``; from the referee's favourite far start too,
``MI_RESTART``), which replaces it only if the referee below prefers it from both images.  The winner
replaces the starting transform only if its feature cost is lower than the start's (``affine_cost``;
or the start leaves most of the fixed object outside the moving field of view and the winner does not)
**and** the do-no-harm referee (NMI at the native grids, :mod:`unireg.align.referee`), seen from the
fixed image and from the moving one, scores it higher (by the deformations' 0.5 % margin when it moves
the object by less than half a voxel, ``SUBVOXEL_AFFINE``); else, in 2-D, an answer that moves the object
far gets a second chance through intensity MI (``RESCUE_LEVELS``), and failing that the start is kept
and report.json says why.
In 3-D, an object turned far beyond the rotation starts (a head stored 90 or 180 degrees off) is looked for
from the two objects' principal axes of inertia too, each such start in its own frame (``PRINCIPAL_AXES_STARTS``,
:func:`_far_turn`), unless the answer already turns the object as those axes do; the referee has the last word.
With ``--transform affine``, and in the 3-D pipeline, the stage runs in two steps as ANTs' ``-t a`` does
(:data:`RIGID_FIRST`, :func:`_rigid_then_affine`): the search above with rotations and translations only,
scales and shears added to its answer by MI, and the 12-parameter search; the referee picks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from ..align.affine import (
    affine_cost,
    center_of_mass_init,
    center_of_mass_world,
    mi_affine,
    optimize_affine,
    polish_affine,
    pool,
    principal_axes_starts,
    rotation_starts,
    structure_mask,
)
from ..align.foreground import otsu_threshold
from ..align.referee import INVERSE_MARGIN
from ..align.referee import MARGIN as REFEREE_MARGIN
from ..features.mind import mind_ssc
from ..masks import mask_on_grid
from ..preprocess import presmooth, to_working_grid
from ..spatial.frames import embed_nd
from ..spatial.frames import spacing as grid_spacing
from ..spatial.grid import with_caller_threads
from ..spatial.world import affine_nd, pooled_affine, working_grid
from .prepare import affine_map, check_working_size, moving_on, referee
from .state import State

__all__ = ["affine", "IMPROVEMENT"]

# relative cost decrease an affine must reach to be kept over its start, and the share of the
# start's overlap (fixed structure inside the moving field of view) it must keep
IMPROVEMENT = 1e-3
MIN_OVERLAP = 0.5
OPTIMISED_STARTS = 1  # after the beam search one full optimisation is enough (2-D suite: same Dice as 2)
# beam search: the best SCREENED_STARTS starts by their raw score get SCREEN_ITERATIONS coarse (8 mm in
# 3-D) optimiser steps and are ranked again (a start at the basin's edge scores badly before it moves)
SCREENED_STARTS = 8
SCREEN_ITERATIONS = 15
# the winner's last steps: on the working grid's own features (the optimiser's finest level is twice
# as coarse), at random points (align.affine.polish_affine), per dimension; 0 = off.  3-D, in-process:
# the affine alone against the true rigid offset of experiments/validate_1mm.py's pairs (2 per family),
# mean error 0.81 -> 0.65 mm (T1-like), 1.10 -> 0.97 mm (T2-like), ~1.5-2 s of a 2-thread run; the held-out
# suite's 10 3-D pairs with the full pipeline, mean Dice 0.929 -> 0.929, EPE 1.10 -> 0.95 mm (the large
# affine body pair 3.48 -> 1.75 mm).  2-D (working grid 1 mm, finest affine level 2 mm): the 25 suite
# pairs lost 0.1 Dice point (a B-spline pair 0.875 -> 0.844), so it stays off there.  Off in 3-D too
# since a small phantom with a fixed mask (tests/interop/test_inputs_outputs.py) came out worse with
# it: 30 steps lowered the 1.5 mm feature cost (0.0067 -> 0.0048) while the translation error grew
# 0.04 -> 0.18 mm and the linear part drifted 0.017 -> 0.080 (an eroded mask and a decaying rate did
# not help): the finer feature cost's minimum is not the true transform there.  Kept as an option
# until it is understood.
POLISH_ITERATIONS = {2: 0, 3: 0}
# Score and optimise each rotation start on moving features taken in that rotation's frame (_Frame),
# per dimension.  2-D: a T2-like MNI slice turned by 15/30/90/135 degrees ends at GM/WM Dice
# 0.967/0.990/0.577/0.402 without, 0.990/0.998/0.998/0.996 with (tests/stages/test_accuracy_guarantees.py),
# +0.2-0.3 s per pair.  3-D: off: on the held-out suite's 10 pairs it changed one, the inverted body
# phantom under a large affine, for the worse (Dice 0.938 -> 0.827): the 8 mm ranking after the beam
# search put a start turned by 30 degrees first, whose full optimisation ended at a 4 mm cost of 0.0417
# where the unturned Otsu-centroid start reaches 0.0333 (OPTIMISED_STARTS = 1 optimises only the
# first); and the frames cost ~1.5 s on the 1 mm MNI pair.
ROTATION_FRAMES = {2: True, 3: False}
# The winner's last steps on intensity mutual information (align.affine.mi_affine: orientation-free,
# where the feature cost pulls rotations towards none), per dimension: (pooling of the working grid,
# iterations), coarse to fine; () = off.  Kept only if the referee prefers it (_mutual_information).
# In-process, the held-out suite's pairs 0-7 of every 3-D family but the aligned one (32 pairs, one
# thread): mean Dice 0.908 -> 0.913, EPE 1.57 -> 1.39 mm; the affine family 0.874 -> 0.890, EPE 3.08 ->
# 2.21 mm (a body phantom turned by 16 degrees 4.03 -> 2.48 mm); one pair lost 0.2 point (a cropped
# body phantom, EPE 1.83 -> 2.37 mm); none below no registration.  Cost: the step is ~1.2 s of a
# 2-thread registration of the 1 mm MNI pair, the whole CLI +15 % there (benchmarks/results/speed_cli.md,
# where the refined affine is kept and the one before it was not).  2-D: off: pairs 0-19 of every
# family (100 pairs) lost 0.03 point on average, two already-aligned thick-slice body pairs were moved
# 0.44 mm below no registration, +0.6 s per pair; there the rotation frames already find turned slices.
MI_LEVELS: dict[int, tuple[tuple[int, int], ...]] = {2: (), 3: ((2, 40), (1, 25))}
MI_POINTS = 10_000  # random fixed points per MI step
# MI's fixed points only where the fixed image is above this (None: everywhere in the fixed grid's box).
# Measured and left off: 3-D affine pairs 0-9 in-process at 0.02 (`python benchmarks/suite_ab.py --dims 3
# --pairs 10 --families affine --threads 2 --set "unireg.stages.affine.MI_FOREGROUND=0.02"`): mean Dice
# 0.892 -> 0.900 but EPE 2.00 -> 2.17 mm; the CT-like label phantom 0.648 -> 0.826 (EPE 5.05 -> 1.53 mm:
# there MI over the whole box, started at the true affine, drifts 8.9 mm away), a cropped PD-like body
# phantom 0.919 -> 0.839 (3.32 -> 8.05 mm), an inverted body phantom 0.953 -> 0.946.  Proposed beside the
# whole-box run (the answer refined both ways, the referee choosing; tried, not kept in the code): the
# same 10 pairs 0.8915 -> 0.8921, EPE 2.00 -> 1.97 mm, three pairs up by 0.03-0.35 point, none down,
# the CT-like pair unchanged (its gain above came from the restart's run), +0.7 s per pair.
MI_FOREGROUND: float | None = None
# The MI step also refines the feature search's raw start that the referee scores highest (of those
# far from the search's answer, MI_RESTART_MM), per dimension: first at MI's coarse level, then, if the
# referee scores it above the answer's own MI refinement, at the finer levels; the referee then picks.
# The feature cost can pull a start into a worse basin.  Suite pair 3d_affine_09 (a T2-like body
# phantom on 1x1x3 mm slices turned by 29.5 degrees about the slice axis): the feature cost's optimum
# is 17 mm from the true map even when started at it (MIND is not rotation-free); the referee ranks
# the matching 30-degree start first of 22 (NMI 1.129 against the search's 1.122), and MI from it ends
# 3.4 mm from the true affine (the answer's MI refinement: 14.4 mm).
MI_RESTART = True
# ... a start counts only if it sends the fixed object at least this far (mean mm) from where the
# search's answer does (another basin, beyond MI's reach from the answer).  The 1 mm MNI speed pair:
# the centroid starts are 1.1-3.8 mm from the answer (the identity, 1.9 mm, scores 0.0004 above it and
# would cost a second MI run for nothing), the 30-degree rotations 22-26 mm.
MI_RESTART_MM = {2: 8.0, 3: 8.0}
# ... and its coarse run goes to a worker thread beside the answer's MI run (on the CPU, two threads or
# more): the 1 mm MNI pair's affine stage, in-process, alternating on and off three times, 3.35 / 2.95
# / 3.05 s with the restart against 3.11 / 3.17 / 2.73 s without (in line: 3.43 / 4.03 vs 2.94 / 3.04)
MI_WORKER = True
# ... and that start goes on to MI's finer levels when the referee scores the start itself (not only
# its coarse MI result) above the answer's refinement.  Fresh 3-D pair 3d_affine_12_body_ct_native
# (session 24, never tuned to: a body phantom turned by 29 degrees, CT-like contrast that makes the
# air brighter than the body, partly outside the moving field of view): the feature cost prefers a
# wrong answer (0.099 against 0.135 at the true affine); the referee's favourite start, 4.9 mm from
# the true affine (NMI 1.0964 against the answer's refinement's 1.0918), came out of MI's coarse
# level 5.6 mm away and scored lower there, so it was dropped; MI's finer level takes it to 3.1 mm:
# Dice 0.734 -> 0.926 (ANTs SyN 0.514), EPE 11.7 -> 2.1 mm.  Held-out suite pairs 0-5 of every 3-D
# family in-process (`python benchmarks/suite_ab.py --dims 3 --pairs 6 --threads 2 --set
# "unireg.stages.affine.RESTART_BY_START=False"`): none of the 30 changed.
RESTART_BY_START = True
# 3-D: the Otsu centroid's rotation starts turn about the oblique axes too (align.affine.OBLIQUE_AXES,
# +-30 degrees about each of ten diagonals: 20 more starts).  Fresh 3-D pair
# 3d_affine_14_labels_inverted_oblique (session 24: a label phantom turned by 30 degrees about an oblique
# axis, scaled by 0.92-1.10): every single-axis start lay 11-15 mm from the true map, where NMI is flat
# (1.01 against 1.16 at the true map), and the feature cost prefers a wrong answer there (0.142 vs
# 0.149); the affine was refused, Dice 0.411 (ANTs SyN 0.127).  A diagonal start lies 4.9 mm from it,
# the referee picks it for the MI restart and MI ends 0.5 mm from the true map: Dice 0.946.  Affine stage
# of the 1 mm MNI pair in-process, alternating: 2.79 / 2.79 s against 2.64 / 2.71 s without (all three
# centroids' diagonals: 3.26 / 3.16 s).  Held-out suite pairs 0-5 of every 3-D family in-process
# (30): 28 unchanged, two affine pairs within 0.0012 Dice (0.8602 -> 0.8614, EPE 1.446 -> 1.425 mm;
# 0.9338 both, EPE 0.787 -> 0.789 mm).  2-D is unchanged (its starts turn in the plane every 15 degrees).
OBLIQUE_STARTS = True
# 3-D: objects turned far.  The rotation starts reach +-30 degrees, and MIND compares self-similarities along the
# grid's axes, so a head whose header turns it by 90 or 180 degrees (prone against supine, an animal or a specimen on
# its side, a converter's error) matches nowhere, even through the right affine: it was refused and flagged, or kept
# half-turned (the demo pair turned by 90 degrees about the anterior axis: 69 degrees off).  After the search, the
# starts that turn the fixed object's principal axes of inertia onto the moving object's (Otsu objects, one per proper
# choice of the axes' signs: align.affine.principal_axes_starts), less those within AXES_AGREE degrees of the search's
# answer (or of the start, where that was refused), are scored at 8 mm on the moving features taken in their own
# frames (_Frame, where a start turns by more than FRAMED_TURN degrees); if one scores below the answer, the best is
# optimised and refined by intensity MI, and it replaces the answer only if the referee prefers it from both images by
# the deformations' margin (two feature costs in two frames do not compare): _far_turn.  The rigid stage and
# --transform rigid do this; the staged affine's 12-parameter search, from the same raw starts, does not.  About 0.15 s
# per 3-D pair (a first look at 8 mm in coarse frames).  As four more starts of the main search instead, a turned
# start's score in its own frame outranked the right answer of a near-symmetric body phantom (held-out
# 3d_affine_00_body_inverted_native: Dice 0.954 -> 0.622); gated on the answer agreeing with any of the four starts,
# the 2 mm MNI head turned by 180 degrees was missed (the start of no turn agrees with a search that stayed where it
# began); without the margin, the atlas registered to a real EPI slab (benchmarks/atlas_subjects.py) swapped its
# answer for another on NMI +0.04 % / +0.01 %.
# 2-D (its rotation starts turn every 15 degrees, but its search has no MI step): only where the search's answer was
# refused, the principal-axes start far from the start that the referee scores highest is refined by intensity MI at
# RESCUE_LEVELS and put to the referee with the same margin (_far_turn_by_mi).  Real-scan pair
# 2d_affine_501_epi_slice_ct_aniso (a CT-like EPI slice, no contrast inside the head, turned by 23 degrees on 1x3 mm
# pixels): MIND at 8 mm scored the start on the true turn below the identity (0.132 against 0.113), the search's
# answer was refused, the pair stayed unregistered (Dice 0.406, EPE 21.2 mm; ANTs SyN 0.459 / 16.6 mm); now 0.742 /
# 2.0 mm, the other 19 real-scan 2-D pairs, the held-out suite's 25 and 50 fresh suite pairs (benchmarks/suite_ab.py
# --dims 2 --start 60 --pairs 70) unchanged, 1.1 -> 1.2 s per pair in-process (MI's coarse level alone first, as a
# look: every refused pair pays for it).
PRINCIPAL_AXES_STARTS = {2: True, 3: True}
FRAMED_TURN = 45.0
AXES_AGREE = 20.0
# Where MI_LEVELS is off (2-D): a feature-search answer the referee refuses although it moves the
# object by more than RESCUE_MM (mean mm from the start: the two disagree about a large misalignment,
# not a sub-voxel one) gets a third opinion, intensity MI at RESCUE_LEVELS from it and from the
# referee's favourite far start, kept if the referee prefers that to the start (_rescue).  Fresh 2-D
# pair 2d_affine_71_labels_piecewise_crop (session 24: a label phantom whose random contrast puts the
# background at the objects' level, cropped, a large affine): the search's answer was wrong (Dice
# 0.36 through it), the referee refused it and the pair stayed unregistered (0.42; ANTs SyN 0.89);
# rescued, 0.88.  `python benchmarks/suite_ab.py --dims 2 --pairs 60 --threads 1 --set
# "unireg.stages.affine.RESCUE_LEVELS={2: (), 3: ()}"`: none of the 300 pairs changed (the rescue
# never fired there).
RESCUE_MM = 8.0
RESCUE_LEVELS: dict[int, tuple[tuple[int, int], ...]] = {2: ((2, 40), (1, 25)), 3: ()}
FOREGROUND = 0.05  # normalised intensity above which a voxel counts as object for the foreground centroid
# An affine that moves the fixed object by less than this share of the coarser image's largest voxel
# edge (mean over the object, from its start) must raise NMI by the deformations' margin
# (referee.MARGIN, INVERSE_MARGIN) seen from both images, not just at all: below a voxel, interpolation
# and partial volumes reshape the joint histogram as much as alignment does.  None: off (any rise).
# The three 2-D suite pairs that ended below no registration (20-59) were aligned thick-slice pairs
# moved 0.18-0.94 mm by an affine NMI accepted (e.g. a 1.4 % stretch on 2x3 mm pixels: +0.24 % /
# +0.05 %).  In-process, `python benchmarks/suite_ab.py --dims 2 --pairs 60 --start 20 --threads 2 --set
# "unireg.stages.affine.SUBVOXEL_AFFINE=None"` (and pairs 0-19): of 300 2-D pairs 14 changed, mean Dice
# 0.9428 -> 0.9430 and EPE 0.795 -> 0.788 mm on pairs 20-59 (below no registration 3 -> 1: the one
# left is moved by its deformation), 13 up by 0.0002-0.018, one down by 0.0001 (EPE 1.069 -> 1.060);
# 3-D pairs 0-9 of every family (50): two changed, an aligned one (EPE 0.16 -> 0.00 mm) and a radial
# one (0.352 -> 0.339 mm, Dice the same); large affines are untouched.
SUBVOXEL_AFFINE: float | None = 0.5
# With --transform rigid|affine the affine is the answer, not the deformation's start: a last intensity-MI step
# (iterations, step size) on the images' own grids (the stage's other steps see the working grid, 2 mm in
# 3-D, and 4 mm features), from the stage's kept answer, kept only if the referee scores it higher seen from
# both images (as the stage's MI step).  None: off.  Measured on a development draw of benchmarks/rigid.py's
# construction (seed 777001, case indices 950+, not the frozen list), in-process, 2 threads; mean error on
# the fixed object against the true map, without -> with: 3-D (6 pairs) rigid 0.145 -> 0.098 mm, affine
# 0.359 -> 0.230 mm, +0.3-0.6 s per pair; 2-D (10 pairs) rigid 0.228 -> 0.124 mm, affine 0.467 -> 0.204 mm;
# 50 iterations instead of 25: 3-D rigid 0.108, affine 0.210.  The deformable pipeline does not run it (its
# refinement goes on from the affine at the native resolution).
NATIVE_MI_POLISH: tuple[int, float] | None = (25, 0.003)
# ... in rigid mode with more points per step and the mean of its last half (mi_affine's ``average``): 6 rigid
# parameters, and the step's jitter was what was left.  Development draws as above (pairs 950-955, 980-989,
# 1000-1007): 3-D 0.105 -> 0.092 / 0.166 -> 0.137 / 0.170 -> 0.144 mm, 2-D 0.127 -> 0.099 / 0.130 -> 0.084 /
# 0.117 -> 0.103 mm, +0.2 s per 3-D pair.  Not in affine mode: 3-D 0.233 -> 0.256 on pairs 950-955.
NATIVE_MI_RIGID: tuple[int, float] = (40_000, 0.5)  # points per step, share of the steps averaged
# The stage in two steps, per mode (Options.transform) and dimension: the rigid search first, then scales and
# shears by intensity MI from its answer (AFFINE_FROM_RIGID_LEVELS: pooling of the working grid, iterations),
# beside the 12-parameter search (AFFINE_SEARCH_TOO); an answer beyond the rigid one must score higher from
# both images.  Measured in-process, 2 threads (session 32), mean error against the true map on the fixed
# object; development draws of benchmarks/rigid.py's construction, never the frozen list:
# --transform affine, rigid truths (seed 777001, pairs 950-955 / 980-989): 3-D 0.233 -> 0.147 / 1.151 ->
# 0.186 mm (a body phantom on 1x1x3 mm slices 8.81 -> 0.22 mm), 2-D 0.185 -> 0.109 / 0.246 -> 0.202 mm;
# affine truths (per-axis scales 0.85-1.15, shears up to 0.1; seed 777002, pairs 950-957 / 990-997): 3-D
# 1.652 -> 0.942 / 0.562 -> 0.376 mm, 2-D 15.45 -> 15.40 / 0.405 -> 0.350 mm; no pair worse by more than
# 0.03 mm.  Without the 12-parameter search beside it (rigid, then MI alone) two affine truths were lost
# (9.27 and 111 mm), hence AFFINE_SEARCH_TOO.  The 3-D pipeline (benchmarks/suite_ab.py, fresh pairs 30-35
# of the affine family): Dice 0.926 -> 0.931, EPE 2.80 -> 0.96 mm, none worse; pairs 30-33 of the other
# four families unchanged; +1.3-2.7 s per pair.  The 2-D pipeline (pairs 60-69 of every family, 50): Dice
# +0.0001, EPE 0.729 -> 0.735 mm, +0.4 s per pair: off there.  --transform rigid: one search, already rigid.
RIGID_FIRST: dict[str, dict[int, bool]] = {"affine": {2: True, 3: True}, "deformable": {2: False, 3: True}}
AFFINE_SEARCH_TOO = True
AFFINE_FROM_RIGID_LEVELS = {2: ((2, 40), (1, 25)), 3: ((2, 40), (1, 25))}
# ... and MI from the rigid answer runs in a worker thread (CPU, two threads or more: _worker_ok) while the
# affine search runs on the main one: the two are independent, MI's small steps leave a core mostly idle.
# The same matrices bit for bit (3-D and 2-D development draws, tests/stages/test_affine.py); the 1 mm MNI
# speed pair's affine stage in-process 4.04 -> 3.65 s (CPU 6.33 -> 6.26 s), whole `--fast` CLI 9.4-10.4 ->
# 9.1-10.0 s over three alternating runs.  A small 2-D pair's stages run on one thread (prepare.stage_threads)
# while the caller's second core idles: the worker counts the caller's threads (State.caller_threads); 2-D
# `--transform affine` on development draws 0.65-0.70 -> 0.60-0.63 s per pair, the same matrices.
PARALLEL_STAGES = True


def _worker_ok(s: State) -> bool:
    """Whether an MI run may go to a worker thread beside the main one (:data:`MI_WORKER`; CPU, two threads
    or more: the stages' own, or the caller's where a small 2-D pair's stages run on one)."""
    return MI_WORKER and s.device.type == "cpu" and max(torch.get_num_threads(), s.caller_threads) >= 2


@contextmanager
def _beside(s: State, name: str, allowed: bool = True):
    """``submit(fn) -> Future``: ``fn`` in a worker thread beside the main one where :func:`_worker_ok` (and
    ``allowed``), else run at once in line (a finished future).  The stage's jobs are independent MI runs, each
    with its own seeded draws: the same figures either way."""
    if not (allowed and _worker_ok(s)):

        def in_line(fn: Callable) -> Future:
            f: Future = Future()
            f.set_result(fn())
            return f

        yield in_line
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        yield lambda fn: pool.submit(with_caller_threads(fn))


def _start(s: State) -> tuple[np.ndarray, str]:
    nd = s.nd
    if s.opts.initial_transform is not None:
        return affine_nd(np.asarray(s.opts.initial_transform, dtype=np.float64), nd), "initial transform"
    return np.eye(nd + 1), "identity"


def _mask_on(s: State, mask_img, shape, aff4) -> torch.Tensor | None:
    """A user mask on a stage's grid as ``(1, *shape)`` float (1 = use), or None."""
    return None if mask_img is None else mask_on_grid(mask_img, shape, aff4).float()[None].to(s.device)


def affine(s: State) -> None:
    """Fill ``t_nd`` and ``moving_w`` (the moving image through the affine on the working grid)."""
    s.announce("affine")
    with s.timer("affine"):
        start, start_name = _start(s)
        if not s.opts.affine:
            s.t_nd = start
            s.keep("affine", False, f"disabled (--no-affine): {start_name} used")
        else:
            staged = RIGID_FIRST.get(s.opts.transform, {}).get(s.nd, False)
            s.t_nd = (_rigid_then_affine if staged else _optimise)(s, start, start_name)
            if s.opts.transform != "deformable" and s.stages["affine"]["kept"]:
                _native_polish(s)
        s.moving_w = moving_on(s, s.w_shape, s.w_aff4, s.t_nd).to(s.device)


class _Frame:
    """The moving image's features in a frame turned by ``rot`` about the moving field of view's centre
    ``c``: frame point ``z`` is moving world point ``rot z + c``.  MIND compares self-similarities
    along the grid's axes, so a moving image turned by 90 degrees against the fixed one matches it
    nowhere, even through the right affine; seen in the frame of a start's rotation, the residual
    turn is small.  A start ``S`` (fixed world -> moving world) is optimised as ``Q S`` (``Q``: moving
    world -> frame) and comes back as ``Q^-1 T``."""

    moving_w0: torch.Tensor  # ``(1, *m_shape)``: the moving image on the frame's working grid (not in a coarse frame)

    def __init__(self, s: State, rot: np.ndarray, fixed: _Frame | None = None, coarse: bool = False):
        """``coarse``: the moving image pulled straight onto the 4 mm grid (8x fewer points than the working
        grid, then pooled), for :meth:`cost` at 8 mm only: a cheap look before a full frame (:func:`_far_turn`)."""
        nd = s.nd
        self.rigid = s.opts.rigid  # rotations and translations only (--transform rigid)
        self.q_inv = np.eye(nd + 1)
        if not np.allclose(rot, np.eye(nd)):
            a = affine_nd(s.moving.affine, nd)  # the field of view's centre voxel, in world mm
            c = a[:nd, :nd] @ ((np.asarray(s.moving.spatial_shape, dtype=np.float64) - 1) / 2) + a[:nd, nd]
            self.q_inv[:nd, :nd], self.q_inv[:nd, nd] = rot, c
        self.q = np.linalg.inv(self.q_inv)
        to_moving = None if np.allclose(self.q_inv, np.eye(nd + 1)) else affine_map(self.q_inv)
        # the frame's own world-aligned working grid: the moving image's, seen through Q
        self.m_shape, self.m_aff4 = working_grid(
            s.moving.spatial_shape, embed_nd(self.q, nd) @ s.moving.affine, **s.model.working
        )
        check_working_size(self.m_shape, self.m_aff4, s.moving.path, "moving")
        # the moving image smoothed once for the working spacing (the smoothing is rotation-free), pulled per frame
        if fixed is None:
            self.smoothed = presmooth(s.moving_n, s.moving.spacing, float(grid_spacing(self.m_aff4, 1)[0]))
        else:
            self.smoothed = fixed.smoothed
        self.m_grid = pooled_affine(self.m_aff4, nd, 2)
        if coarse:
            shape = tuple(-(-n // 2) for n in self.m_shape)  # the pooled grid's (ceil mode)
            moving_4 = to_working_grid(self.smoothed, s.moving.affine, s.moving.spacing, shape, self.m_grid,
                                       world_map=to_moving, smoothed=True).to(s.device)  # no moving_w0: not for MI
        else:
            self.moving_w0 = to_working_grid(
                self.smoothed,
                s.moving.affine,
                s.moving.spacing,
                self.m_shape,
                self.m_aff4,
                world_map=to_moving,
                smoothed=True,
            ).to(s.device)
            moving_4 = pool(self.moving_w0[None], 2)[0]
        with torch.no_grad():
            # MIND of the 2x-pooled working images (4 mm in 3-D): enough for an affine, 8x cheaper
            self.fm = mind_ssc(moving_4[None])
        self.moving_b = None
        if s.opts.moving_mask is not None:
            mmask = mask_on_grid(s.opts.moving_mask, self.fm.shape[2:], self.m_grid, world_map=to_moving)
            self.moving_b = mmask.to(s.device)
        self.fm8 = pool(self.fm, 2)
        self.m8 = pooled_affine(self.m_grid, nd, 2)
        if fixed is None:  # the fixed side, shared by every frame
            with torch.no_grad():
                self.ff = mind_ssc(pool(s.fixed_w[None], 2))
            self.f_grid = pooled_affine(s.w_aff4, nd, 2)
            fmask = _mask_on(s, s.opts.fixed_mask, self.ff.shape[2:], self.f_grid)
            self.weight = None if fmask is None else fmask[None] * structure_mask(self.ff)
            self.fixed_b = None if fmask is None else fmask[0] > 0.5
            self.ff8, self.f8 = pool(self.ff, 2), pooled_affine(self.f_grid, nd, 2)
            self.w8 = None if self.weight is None else (pool(self.weight, 2) > 0.5).float()
        else:
            self.ff, self.f_grid, self.weight, self.fixed_b = fixed.ff, fixed.f_grid, fixed.weight, fixed.fixed_b
            self.ff8, self.f8, self.w8 = fixed.ff8, fixed.f8, fixed.w8
        self.pyramid = {1: (self.ff, self.fm), 2: (self.ff8, self.fm8)}  # pooled once for every start
        self.raw: tuple[bytes, list, list] | None = None  # _search's raw starts from one start, and their ranking

    def cost(self, m: np.ndarray, coarse: bool = False) -> tuple[float, float]:
        """(feature cost, overlap) of the fixed->moving affine ``m``, at 4 mm (8 mm: ``coarse``)."""
        if coarse:
            return affine_cost(self.ff8, self.f8, self.fm8, self.m8, self.q @ m, self.w8)
        return affine_cost(self.ff, self.f_grid, self.fm, self.m_grid, self.q @ m, self.weight)

    def optimise(self, ms: np.ndarray, levels) -> np.ndarray:
        """``ms`` ``(nd+1, nd+1)`` or a stack of them, optimised side by side; fixed->moving world."""
        with torch.enable_grad():
            t = optimize_affine(
                self.ff,
                self.f_grid,
                self.fm,
                self.m_grid,
                self.q @ ms,
                levels=levels,
                fixed_mask=self.fixed_b,
                moving_mask=self.moving_b,
                pooled=self.pyramid,
                rigid=self.rigid,
            )
        return self.q_inv @ t


def _score(cost_overlap) -> float:
    """Out-of-view structure costs as much as the worst match."""
    c, o = cost_overlap
    return c * o + (1.0 - o) * 0.5


def _search(s: State, start: np.ndarray, identity: _Frame) -> tuple[np.ndarray, str, _Frame, list]:
    """The best affine of the starts (see the module's docstring): ``(matrix, start's name, its frame,
    every start as (name, matrix))``."""
    nd = s.nd

    def rank(cands) -> list:  # (score at 8 mm, name, matrix, frame), best first
        return sorted(((_score(f.cost(m, coarse=True)), name, m, f) for name, m, f in cands), key=lambda t: t[0])

    # the raw starts, their frames and their ranking do not depend on the search's parameters (rigid or
    # not): the staged affine's two searches from one start share them through the identity frame
    key = start.tobytes()
    if identity.raw is None or identity.raw[0] != key:
        frames: dict[bytes, _Frame] = {np.eye(nd).round(6).tobytes(): identity}

        def frame(m: np.ndarray) -> _Frame:  # the frame of a start's linear part (a rotation, or none)
            if not ROTATION_FRAMES[nd]:
                return identity
            k = m[:nd, :nd].round(6).tobytes()
            if k not in frames:
                frames[k] = _Frame(s, m[:nd, :nd], identity)
            return frames[k]

        raw = [("start", start, identity)]
        if s.opts.initial_transform is None:
            cands = _centroid_starts(s, start, identity.moving_w0[0], identity.m_shape, identity.m_aff4)
            raw += [(name, m, frame(m)) for name, m in cands]
        identity.raw = (key, raw, rank(raw))
    _, starts, raw_ranked = identity.raw
    for _, _, f in starts:  # this search's parameters (--transform rigid: rotations and translations only)
        f.rigid = s.opts.rigid

    # beam search: a few coarse steps for the best raw starts (one near the basin's edge gets in), ranked again
    ranked = raw_ranked[:SCREENED_STARTS]
    if SCREEN_ITERATIONS:  # the screened starts of one frame side by side, one batched optimisation each
        moved: dict[int, np.ndarray] = {}
        for f in {id(f): f for _, _, _, f in ranked}.values():
            idx = [i for i, r in enumerate(ranked) if r[3] is f]
            out = f.optimise(np.stack([ranked[i][2] for i in idx]), ((2, SCREEN_ITERATIONS),))
            moved.update(zip(idx, out, strict=True))
        ranked = [(c, name, moved[i], f) for i, (c, name, _, f) in enumerate(ranked)]
    best_score, best = float("inf"), (start, "", identity)
    for _, name, m, f in rank([(name, m, f) for _, name, m, f in ranked])[:OPTIMISED_STARTS]:
        t = f.optimise(m, ((2, 60), (1, 12)))
        score = _score(f.cost(t))
        if score < best_score:
            best_score, best = score, (t, name, f)
    return (*best, [(name, m) for name, m, _ in starts])


def _optimise(
    s: State, start: np.ndarray, start_name: str, identity: _Frame | None = None, far_turns: bool = True
) -> np.ndarray:
    identity = _Frame(s, np.eye(s.nd)) if identity is None else identity
    best, best_name, best_frame, starts = _search(s, start, identity)
    if POLISH_ITERATIONS[s.nd]:
        best = _polish(s, best, identity.moving_w0, identity.m_aff4)
    mi_note = ""
    if MI_LEVELS[s.nd]:
        best, mi_note = _mutual_information(s, best, identity, starts)
    best_c, best_o = best_frame.cost(best)
    start_c, start_o = identity.cost(start)
    what = (
        f"feature cost {start_c:.4f} ({start_name}, overlap {start_o:.2f}) -> {best_c:.4f} "
        f"(optimised from {best_name}{mi_note}, overlap {best_o:.2f})"
    )
    if not s.opts.do_no_harm:
        s.keep("affine", True, what + "; do-no-harm check off")
        return best
    lower = best_c < start_c * (1 - IMPROVEMENT) and best_o >= MIN_OVERLAP * start_o
    # a start that leaves most of the fixed object outside the moving field of view (world coordinates
    # from another scanner or program) costs little on the few points it sees: an affine that brings
    # the object into view is put to the referee whatever the two costs
    into_view = start_o < MIN_OVERLAP <= best_o
    if lower or into_view:
        ok, verdict = _referee_prefers(s, start, best)
        if ok:
            turned = _far_turn(s, best, identity) if far_turns else None
            if turned is not None:
                m, note = turned
                s.keep("affine", True, f"{what}{verdict}; refused for {note}")
                return m
            s.keep("affine", True, what + verdict)
            return best
        rescued = _rescue(s, start, best, identity, starts)
        if rescued is not None:
            m, note = rescued
            s.keep("affine", True, f"{what}{verdict}: refused; {note}")
            return m
        refusal = f"the referee disagrees: {what}{verdict}"
    else:
        refusal = f"no improvement: {what}"
    turned = _far_turn(s, start, identity, refused=True) if far_turns else None
    if turned is not None:
        m, note = turned
        s.keep("affine", True, f"{refusal}; {start_name} refused for {note}")
        return m
    s.keep("affine", False, f"{refusal}; {start_name} kept")
    return start


def _far_turn(s: State, answer: np.ndarray, identity: _Frame, refused: bool = False) -> tuple[np.ndarray, str] | None:
    """:data:`PRINCIPAL_AXES_STARTS`: the principal-axes starts that turn the fixed object more than
    :data:`AXES_AGREE` degrees away from ``answer`` (the stage's answer so far, or its start), each in its own
    frame where it turns far, scored at 8 mm; the best two given a few steps, the best of those optimised and
    refined by MI.  ``(matrix, note)`` if the referee prefers it to ``answer`` from both images by the margin of
    another basin, else None (also when no start scores below ``answer`` at 8 mm: nothing turned far matches
    better).  Where the search has no MI step (2-D), only where its answer was refused (``refused``: ``answer`` is
    the start), and by MI alone: :func:`_far_turn_by_mi`."""
    nd = s.nd
    if not PRINCIPAL_AXES_STARTS[nd] or s.opts.initial_transform is not None or not (MI_LEVELS[nd] or refused):
        return None
    f_in, m_in = _inputs_in_masks(s, identity.moving_w0[0], identity.m_shape, identity.m_aff4)
    cands = principal_axes_starts((f_in > otsu_threshold(f_in)).float(), s.w_aff4,
                                  (m_in > otsu_threshold(m_in)).float(), identity.m_aff4)
    # the starts that turn the object as the answer does: the main search has been there
    cands = [m for m in cands if _turn_deg(np.linalg.inv(m) @ answer, nd) > AXES_AGREE]
    if not MI_LEVELS[nd]:
        return _far_turn_by_mi(s, answer, identity, cands)
    # a first look at 8 mm in coarse frames; the best two then get full frames
    looks = [(m, _Frame(s, m[:nd, :nd], identity, coarse=True) if _turn_deg(m, nd) > FRAMED_TURN else identity)
             for m in cands]
    ranked = sorted(((_score(f.cost(m, coarse=True)), i, m, f) for i, (m, f) in enumerate(looks)), key=lambda t: t[:2])
    if not ranked or ranked[0][0] >= _score(identity.cost(answer, coarse=True)):
        return None
    framed = [(i, m, identity if f is identity else _Frame(s, m[:nd, :nd], identity)) for _, i, m, f in ranked[:2]]
    for _, _, f in framed:
        f.rigid = s.opts.rigid
    moved = [(_score(f.cost(t := f.optimise(m, ((2, SCREEN_ITERATIONS),)), coarse=True)), i, t, f)
             for i, m, f in framed]
    _, i, m, f = min(moved, key=lambda t: t[:2])
    cand, mi_note = _mutual_information(s, f.optimise(m, ((2, 60), (1, 12))), identity)  # 3-D: MI_LEVELS set
    ok, verdict = _referee_prefers(s, answer, cand, far=True)
    note = f"an affine turned by {_turn_deg(cand, nd):.0f} degrees, optimised from principal axes {i}{mi_note}{verdict}"
    return (cand, note) if ok else None


def _far_turn_by_mi(s: State, answer: np.ndarray, identity: _Frame, cands: list) -> tuple[np.ndarray, str] | None:
    """2-D (no MI step in the search, whose answer the referee refused): the start the referee scores highest
    (as the MI restart picks its far start), if MI's coarse level alone takes it above ``answer`` in the referee's
    eyes, refined by intensity MI at :data:`RESCUE_LEVELS`; ``(matrix, note)`` if the referee prefers that to
    ``answer`` from both images by another basin's margin, else None."""
    if not cands:
        return None
    fwd, levels = referee(s), RESCUE_LEVELS[s.nd]
    i, m = max(enumerate(cands), key=lambda t: fwd.score(t[1]))
    probe, _ = _mutual_information(s, m, identity, levels=levels[:1])  # MI's coarse level alone, a look
    if fwd.score(probe) <= fwd.score(answer):
        return None
    cand, note = _mutual_information(s, m, identity, levels=levels)
    ok, verdict = _referee_prefers(s, answer, cand, far=True)
    turn = _turn_deg(cand, s.nd)
    return (cand, f"an affine turned by {turn:.0f} degrees from principal axes {i}{note}{verdict}") if ok else None


def _turn_deg(m: np.ndarray, nd: int) -> float:
    """The angle (degrees) of the rotation nearest ``m``'s linear part."""
    u, _, vt = np.linalg.svd(m[:nd, :nd])
    r = u @ vt
    c = (np.trace(r) - 1) / 2 if nd == 3 else r[0, 0]
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _rigid_then_affine(s: State, start: np.ndarray, start_name: str) -> np.ndarray:
    """``--transform affine`` in stages, as ``antsRegistrationSyN.sh -t a`` (a rigid stage, then an affine one
    from it) and elastix's usual rigid + affine parameter maps (:data:`RIGID_FIRST`).  Candidates, each
    already preferred to the start by the stage's own do-no-harm test: the rigid stage's answer, scales and
    shears added to it by intensity MI (:data:`AFFINE_FROM_RIGID_LEVELS`), and the affine stage's own search
    from the starts (:data:`AFFINE_SEARCH_TOO`).  An answer beyond the rigid one must score higher from both
    images (the referee); of those, the highest sum wins."""
    opts = s.opts
    s.opts = dataclasses.replace(opts, transform="rigid")
    try:
        identity = _Frame(s, np.eye(s.nd))
        rigid_m = _optimise(s, start, start_name, identity)
        rigid_kept, rigid_why = s.stages["affine"]["kept"], s.stages["affine"]["reason"]
    finally:
        s.opts = opts
    cands: list[tuple[str, np.ndarray, str]] = []  # (name, matrix, the stage's reason), each kept over the start
    why = rigid_why
    with _beside(s, "unireg-affine-from-rigid", PARALLEL_STAGES) as submit:
        # MI from the rigid answer in a worker beside the affine search (:data:`PARALLEL_STAGES`)
        from_rigid = None
        if rigid_kept:
            refine = _working_mi(s, identity)
            from_rigid = submit(lambda: refine(rigid_m, AFFINE_FROM_RIGID_LEVELS[s.nd]))
        searched = None
        if AFFINE_SEARCH_TOO:
            m = _optimise(s, start, start_name, identity, far_turns=False)  # the rigid stage has looked far
            why = s.stages["affine"]["reason"]
            searched = m if s.stages["affine"]["kept"] else None
        if from_rigid is not None:
            cands.append(("the rigid stage", rigid_m, rigid_why))
            cands.append(("scales and shears added to it by intensity MI", from_rigid.result(), rigid_why))
        if searched is not None:
            cands.append(("the affine search", searched, why))
    if not cands:
        s.keep("affine", False, f"rigid stage: {rigid_why}; affine search: {why}")
        return start
    fwd, bwd = referee(s), referee(s, inverse=True)
    scored = [(fwd.score(m), bwd.score(m), name, m, reason) for name, m, reason in cands]
    best = scored[0]
    for c in scored[1:]:  # beyond the first (the rigid answer when there is one): higher from both images
        if c[0] > scored[0][0] and c[1] > scored[0][1] and c[0] + c[1] > best[0] + best[1]:
            best = c
    note = "; ".join(f"{name}: NMI {f:.4f}, from the moving image {b:.4f}" for f, b, name, _, _ in scored)
    s.keep("affine", True, f"{best[4]}; rigid, then affine ({note}): {best[2]} kept")
    return best[3]


def _referee_prefers(s: State, start: np.ndarray, cand: np.ndarray, far: bool = False) -> tuple[bool, str]:
    """Whether the do-no-harm referee scores ``cand`` above ``start`` seen from the fixed image and
    from the moving one (by the deformations' margin for a sub-voxel change, :data:`SUBVOXEL_AFFINE`, and
    for ``far``: another basin than the search's, :func:`_far_turn`), and the figures for the report."""
    judge = referee(s)
    n0, n1 = judge.score(start), judge.score(cand)
    what = f"; NMI {n0:.4f} -> {n1:.4f}"
    margin, inverse_margin, small = 0.0, 0.0, _subvoxel(s, cand, start)
    if small or far:
        margin, inverse_margin = REFEREE_MARGIN, INVERSE_MARGIN
        why = f"a sub-voxel change, {small}" if small else "another basin"
        what += f" ({why}: NMI must rise by {margin:.1%} from each side)"
    if n1 > n0 * (1 + margin):
        back = referee(s, inverse=True)
        b0, b1 = back.score(start), back.score(cand)
        what += f", seen from the moving image {b0:.4f} -> {b1:.4f}"
        if b1 > b0 * (1 + inverse_margin):  # as from the fixed side
            return True, what
    return False, what


def _rescue(s: State, start: np.ndarray, best: np.ndarray, identity: _Frame, starts) -> tuple[np.ndarray, str] | None:
    """Where the stage has no intensity-MI step (:data:`MI_LEVELS` off, 2-D) and the referee refuses a
    feature-search answer that moves the object far (:data:`RESCUE_MM`), a third opinion: the answer and
    the referee's favourite far start refined by MI at :data:`RESCUE_LEVELS` (:func:`_mutual_information`),
    kept only if the referee prefers it to the start from both images.  ``(matrix, note)`` or None."""
    levels = RESCUE_LEVELS.get(s.nd, ())
    if MI_LEVELS[s.nd] or not levels or _separation(_object_points(s), best, start, s.nd) <= RESCUE_MM:
        return None
    cand, note = _mutual_information(s, best, identity, starts, levels=levels)
    if np.array_equal(cand, best):
        return None
    ok, verdict = _referee_prefers(s, start, cand)
    return (cand, f"rescued by intensity MI{note.removeprefix(', refined by intensity MI')}{verdict}") if ok else None


def _mutual_information(
    s: State, best: np.ndarray, identity: _Frame, starts=(), levels: tuple[tuple[int, int], ...] | None = None
) -> tuple[np.ndarray, str]:
    """``best`` refined on the working grids' intensities by mutual information (:func:`mi_affine`),
    and a note for the report.  The refined affine replaces ``best`` only if the do-no-harm referee
    (NMI at the native grids, other points, partial-volume histograms) scores it higher seen from
    both images: on a body phantom under a smooth field the 2 mm MI (30 000 points per step then)
    pulled a feature-cost affine (EPE 3.4 mm) to a tilted one (5.7 mm) that the referee scores lower
    from the fixed side.

    ``starts`` (name, matrix): the feature search's raw starts.  With :data:`MI_RESTART`, the one the
    referee scores highest of those at least :data:`MI_RESTART_MM` from ``best`` is refined by MI at
    the coarse level, and at the finer ones if the referee then prefers it to ``best``'s refinement
    (the feature search may have left that start's basin for a worse one); of the refinements the
    referee accepts, the one it scores highest (both sides summed) is kept.  ``levels``: MI's (pooling,
    iterations), coarse to fine (default: :data:`MI_LEVELS` of the dimension)."""
    levels = MI_LEVELS[s.nd] if levels is None else levels
    working_mi = _working_mi(s, identity)

    def refine(m: np.ndarray, levels=levels) -> np.ndarray:
        return working_mi(m, levels)

    fwd, bwd = referee(s), referee(s, inverse=True)  # built here, before a worker thread may score

    def restart() -> tuple[float, str, np.ndarray] | None:
        """The referee's favourite far start (its score, name) refined at MI's coarse level."""
        x = _object_points(s)
        far = [(name, m) for name, m in starts if _separation(x, m, best, s.nd) > MI_RESTART_MM[s.nd]]
        if not far:
            return None
        score, name, m = max(((fwd.score(m), name, m) for name, m in far), key=lambda t: t[0])
        return score, name, refine(m, levels[:1])

    with _beside(s, "unireg-mi-restart") as submit:
        # the restart's coarse run in a worker thread beside the answer's (small steps, mostly one core each)
        job = submit(restart) if MI_RESTART and starts else None
        cand = refine(best)
        again = job.result() if job is not None else None
    if np.array_equal(cand, best):  # every level skipped (too small an image for MI)
        return best, ""
    f0, b0 = fwd.score(best), bwd.score(best)
    scored = [(fwd.score(cand), bwd.score(cand), "", cand)]
    if again is not None:  # its finer levels if the referee then prefers it to the answer's refinement
        score, name, coarse = again
        if max(fwd.score(coarse), score if RESTART_BY_START else 0.0) > scored[0][0]:
            m = refine(coarse, levels[1:])
            scored.append((fwd.score(m), bwd.score(m), f" from {name} (its NMI {score:.4f})", m))
    accepted = [t for t in scored if t[0] > f0 and t[1] > b0]
    notes = "; ".join(
        f"NMI {f0:.4f} -> {f1:.4f}, from the moving image {b0:.4f} -> {b1:.4f}{w}" for f1, b1, w, _ in scored
    )
    if accepted:
        f1, b1, where, m = max(accepted, key=lambda t: t[0] + t[1])
        return m, f", refined by intensity MI{where} ({notes})"
    return best, f", its intensity-MI refinement not kept ({notes})"


def _working_mi(s: State, identity: _Frame) -> Callable[[np.ndarray, tuple], np.ndarray]:
    """``refine(m, levels)``: :func:`_stage_mi` of the working-grid images (the fixed one, the moving one on its
    own working grid, ``identity``'s) from ``m``, with the stage's masks (the user's, :data:`MI_FOREGROUND`)."""
    fmask = _mask_on(s, s.opts.fixed_mask, s.w_shape, s.w_aff4)
    if MI_FOREGROUND is not None:  # MI's points in the fixed object only
        inside = (s.fixed_w > MI_FOREGROUND).float()
        fmask = inside if fmask is None else fmask * inside
    mmask = _mask_on(s, s.opts.moving_mask, identity.m_shape, identity.m_aff4)

    def refine(m: np.ndarray, levels: tuple) -> np.ndarray:
        return _stage_mi(s, (s.fixed_w[0], s.w_aff4), (identity.moving_w0[0], identity.m_aff4), m, fmask, mmask,
                         levels=levels)

    return refine


def _stage_mi(s: State, fixed, moving, init: np.ndarray, fmask, mmask, points: int | None = None, **kw) -> np.ndarray:
    """:func:`mi_affine` of ``fixed`` / ``moving`` (``(image, its grid's 4x4)``) from ``init`` with the stage's
    settings: ``points`` random points per step (:data:`MI_POINTS` when None), the masks (``(1, *S)`` floats
    or None) as booleans, the run's seed, rigid or not; ``kw``: the levels, the step size, the averaging."""
    with torch.enable_grad():
        return mi_affine(
            fixed[0],
            fixed[1],
            moving[0],
            moving[1],
            init,
            points=MI_POINTS if points is None else points,
            fixed_mask=None if fmask is None else fmask[0] > 0.5,
            moving_mask=None if mmask is None else mmask[0] > 0.5,
            seed=s.opts.seed,
            rigid=s.opts.rigid,
            **kw,
        )


def _native_polish(s: State) -> None:
    """:data:`NATIVE_MI_POLISH`: the kept affine ``s.t_nd`` refined by intensity MI on the native grids, kept
    if the referee prefers it from both images; the stage's report says which."""
    if NATIVE_MI_POLISH is None:
        return
    iterations, step = NATIVE_MI_POLISH
    fmask = _mask_on(s, s.opts.fixed_mask, s.fixed.spatial_shape, s.fixed.affine)
    mmask = _mask_on(s, s.opts.moving_mask, s.moving.spatial_shape, s.moving.affine)
    points, average = NATIVE_MI_RIGID if s.opts.rigid else (None, 0.0)
    cand = _stage_mi(s, (s.fixed_n, s.fixed.affine), (s.moving_n, s.moving.affine), s.t_nd, fmask, mmask,
                     points=points, levels=((1, iterations),), lr=step, average=average)
    if np.array_equal(cand, s.t_nd):  # too small an image for MI's histogram
        return
    fwd, bwd = referee(s), referee(s, inverse=True)
    f0, f1, b0, b1 = fwd.score(s.t_nd), fwd.score(cand), bwd.score(s.t_nd), bwd.score(cand)
    kept = f1 > f0 and b1 > b0
    note = f"; native-grid MI polish NMI {f0:.4f} -> {f1:.4f}, from the moving image {b0:.4f} -> {b1:.4f}"
    s.keep("affine", True, s.stages["affine"]["reason"] + note + ("" if kept else ", not kept"))
    if kept:
        s.t_nd = cand


def _subvoxel(s: State, best: np.ndarray, start: np.ndarray) -> str:
    """A note (``"0.56 mm against 3.00 mm voxels"``) when ``best`` moves the fixed object by less than
    :data:`SUBVOXEL_AFFINE` of the coarser image's largest voxel edge from ``start``; "" otherwise."""
    if SUBVOXEL_AFFINE is None:
        return ""
    voxel = max(float(np.max(s.fixed.spacing)), float(np.max(s.moving.spacing)))
    moved = _separation(_object_points(s), best, start, s.nd)
    return f"{moved:.2f} mm against {voxel:.2f} mm voxels" if moved < SUBVOXEL_AFFINE * voxel else ""


def _object_points(s: State) -> np.ndarray:
    """World points (mm, ``(N, nd)``, at most ~40 000) of the fixed image's object: working-grid voxels
    above :data:`FOREGROUND`, inside a fixed mask (the whole grid if none is)."""
    inside = s.fixed_w[0] > FOREGROUND
    if s.opts.fixed_mask is not None:
        inside &= mask_on_grid(s.opts.fixed_mask, s.w_shape, s.w_aff4).to(inside.device)
    vox = inside.nonzero().cpu().numpy().astype(np.float64)
    if len(vox) == 0:
        vox = np.asarray(np.nonzero(np.ones(s.w_shape)), dtype=np.float64).T
    vox = vox[:: max(1, len(vox) // 20_000)]
    w = affine_nd(s.w_aff4, s.nd)
    return vox @ w[: s.nd, : s.nd].T + w[: s.nd, s.nd]


def _separation(x: np.ndarray, a: np.ndarray, b: np.ndarray, nd: int) -> float:
    """Mean distance (mm) between where the affines ``a`` and ``b`` (fixed world -> moving world) send
    the points ``x`` (:func:`_object_points`)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (nd+1, nd+1) each
    return float(np.linalg.norm(x @ d[:nd, :nd].T + d[:nd, nd], axis=1).mean())


def _polish(s: State, best: np.ndarray, moving_w0: torch.Tensor, m_aff4: np.ndarray) -> np.ndarray:
    """``best`` refined on MIND of the working grids themselves (:func:`polish_affine`)."""
    with torch.no_grad():
        ff, fm = mind_ssc(s.fixed_w[None]), mind_ssc(moving_w0[None])
    fmask = _mask_on(s, s.opts.fixed_mask, ff.shape[2:], s.w_aff4)
    mmask = _mask_on(s, s.opts.moving_mask, fm.shape[2:], m_aff4)
    with torch.enable_grad():
        return polish_affine(
            ff,
            s.w_aff4,
            fm,
            m_aff4,
            best,
            iterations=POLISH_ITERATIONS[s.nd],
            fixed_mask=None if fmask is None else fmask[0] > 0.5,
            moving_mask=None if mmask is None else mmask[0] > 0.5,
            seed=s.opts.seed,
            rigid=s.opts.rigid,
        )


def _centroid_starts(s: State, start: np.ndarray, moving_w0: torch.Tensor, m_shape, m_aff4) -> list:
    """Translations onto the moving centroid, and rotations of each about the fixed centroid: of the
    intensities, of a fixed-threshold foreground and of each image's Otsu foreground (contrast-
    independent: a T2-like moving image weighs its tissues quite differently from the T1 it is
    matched to; noise or bias inside a field of view can exceed the fixed threshold).  Centroids
    are taken inside the masks (an artefact outside must not pull them)."""
    f_in, m_in = _inputs_in_masks(s, moving_w0, m_shape, m_aff4)
    bases = (
        ("centre of mass", f_in, m_in),
        ("foreground centroid", (f_in > FOREGROUND).float(), (m_in > FOREGROUND).float()),
        ("Otsu centroid", (f_in > otsu_threshold(f_in)).float(), (m_in > otsu_threshold(m_in)).float()),
    )
    out = []
    for name, a, b in bases:
        com = center_of_mass_init(a, s.w_aff4, b, m_aff4) @ start
        centre = center_of_mass_world(a, s.w_aff4)
        out += [(name, com)] + [
            (f"{name}, rotation {i}", m)
            for i, m in enumerate(
                rotation_starts(centre, s.nd, com, oblique=OBLIQUE_STARTS and name == "Otsu centroid")
            )
        ]
    return out


def _inputs_in_masks(s: State, moving_w0: torch.Tensor, m_shape, m_aff4) -> tuple[torch.Tensor, torch.Tensor]:
    """The working-grid fixed image and ``moving_w0`` (the moving one on its grid ``m_shape``, ``m_aff4``), each
    zero outside the user's mask, if any: what the centroids and principal axes are taken of."""
    f_in, m_in = s.fixed_w[0], moving_w0  # on the registration's device
    if s.opts.fixed_mask is not None:
        f_in = f_in * mask_on_grid(s.opts.fixed_mask, s.w_shape, s.w_aff4).float().to(f_in.device)
    if s.opts.moving_mask is not None:
        m_in = m_in * mask_on_grid(s.opts.moving_mask, m_shape, m_aff4).float().to(m_in.device)
    return f_in, m_in
