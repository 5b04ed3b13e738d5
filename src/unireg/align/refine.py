"""Test-time instance optimisation of the velocity field on frozen local (MIND) features.

Multi-resolution, coarse to fine (issue #10): the network's velocity is refined

1. ``coarse``: on the velocity's own grid (half the working grid: 4 mm in 3-D), features of images
   pooled to that grid;
2. ``working``: the similarity on the working grid (2 mm in 3-D, 1 mm in 2-D);
3. ``native``: the similarity at the fixed image's **own** resolution (the *fine grid*: the working
   grid subdivided so its spacing matches the fixed image's finest spacing, capped by a voxel
   budget).

The velocity stays on its own grid (a control grid, like a B-spline grid); levels 2 and 3 measure
the similarity on random points drawn afresh every iteration inside the object (as elastix's random
sampler does), so an iteration costs about the same at 1 mm as at 4 mm.

Every level minimises ``feature MSE + lambda * diffusion(displacement)`` with Adam (``lambda`` =
``REFINE_REG[ndim] * smoothness``); the displacement
stays ``exp(velocity)``, so the result is diffeomorphic whatever the level.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..features.mind import mind_ssc
from ..losses import feature_mse, gradient_l2
from ..losses.similarity import parzen_mutual_information
from ..spatial.grid import channels_last, random_box_voxels, resize_field, sample, warp, with_caller_threads
from ..spatial.integrate import integrate_velocity
from .optim import Adam

# The similarity counts only fixed points whose moved position lies inside the moving image's field of
# view, eroded by the features' footprint (MIND-SSC's neighbour distance plus its patch radius: within
# it, a moving feature mixes in the zeros beyond the edge of the image).  ITK's metrics (ANTs, elastix)
# likewise drop samples that map outside the moving image.  Without it a moving image cropped through
# the object shows an edge at its cut that the fixed image does not have, and the refinement pulls
# anatomy towards it (an aligned PD-like body phantom whose moving image was cut 11-13 % short on two
# axes was moved 1.6 mm, Dice 1.000 -> 0.910).  Held-out suite in-process (benchmarks/suite_ab.py,
# A/B in session 21, the flag then off by default): 2-D pairs 0-29 of every family (150), Dice
# 0.9428 -> 0.9431, EPE 0.792 -> 0.768 mm,
# no family worse; 3-D pairs 0-3 (20) 0.9358 -> 0.9351, EPE 0.947 -> 0.949 mm (the affine family
# 0.920 -> 0.915), pairs 10-11 (10) 0.9198 -> 0.9304, EPE 1.084 -> 0.840 mm, below no registration 1 -> 0.
# False: every fixed point counts (the behaviour before session 21).
FOV_AWARE = True
MIND_FOOTPRINT = 3  # voxels: mind_ssc's default dilation (2) + radius (1)


def valid_fov(fov: torch.Tensor, shape, margin: int = MIND_FOOTPRINT) -> torch.Tensor:
    """``(1, 1, *shape)`` float 0/1: where the moving image's field of view ``fov`` (``(1, 1, *S)``, 1
    inside, on a grid with the same corners) covers a voxel and its ``margin`` neighbours along each
    axis (a box erosion, one axis at a time; the grid's own edges erode nothing)."""
    f = fov if tuple(fov.shape[2:]) == tuple(shape) else pool_to(fov, tuple(shape))
    inside = f[0, 0] > 0.999
    for axis in range(inside.dim()):
        src, out = inside, inside.clone()
        n = inside.shape[axis]
        for k in range(1, min(margin, n - 1) + 1):
            out.narrow(axis, k, n - k).logical_and_(src.narrow(axis, 0, n - k))
            out.narrow(axis, 0, n - k).logical_and_(src.narrow(axis, k, n - k))
        inside = out
    return inside.float()[None, None]


__all__ = [
    "refine_velocity",
    "refine_multilevel",
    "polish",
    "FinestLevel",
    "RefineLevel",
    "schedule",
    "DEFAULT_ITERATIONS",
    "FAST_ITERATIONS",
    "REG_SCALE",
    "REFINE_REG",
    "LEVEL_NAMES",
    "mind_cost",
    "pool_to",
    "UNBIASED_SAMPLING",
]

# Regulariser weight per unit of user smoothness in the networks' training loss (the trainer's); it
# was chosen so that smoothness=1 keeps folding near zero on the MNI demo pair.
REG_SCALE = 0.5
# ... and in the refinement, per dimension.  3-D: 4x the training weight.  Measured in-process on the
# held-out suite (python benchmarks/held_out.py's pairs, UniReg only, 1 thread), 10 3-D pairs, mean
# Dice / EPE mm at 0.5, 1, 2, 4: 0.919 / 1.20, 0.924 / 1.13, 0.928 / 1.11, 0.927 / 1.17 (weaker
# weights fit noise at the 1 mm level: a CT-like pair lost Dice while its EPE fell).
# Checked on ten other 3-D pairs of the suite (index 2-3 of each family): 0.919 / 1.66 at 0.5, 0.924 / 1.57 at 2.
# 2-D (the velocity lives on the 1 mm working grid itself), 25 pairs, mean Dice / EPE mm with the
# 3-D schedule's 30 + 15 iterations: 0.939 / 0.94 at 0.5, 0.936 / 0.95 at 2; with 60 + 60 (the 2-D
# schedule below): 0.945 / 0.81 at 1, 0.943 / 0.84 at 2, 0.943 / 0.86 at 0.5.  Checked on the 25
# other 2-D pairs of the suite (index 5-9 of each family): 0.941 (0.5, 30 + 15) -> 0.947 (1, 60 + 60),
# every family up, no pair below its start.  (All of the above with the features compared on grid
# points, before UNBIASED_SAMPLING.)  With UNBIASED_SAMPLING, 2-D, 100 suite pairs (20 per deformation
# family) in-process, mean Dice / EPE mm / pairs below no registration at 1, 1.5, 2, 3: 0.9449 / 0.799
# / 4, 0.9453 / 0.781 / 2, 0.9447 / 0.787 / 1, 0.9410 / 0.822 / 2 (grid points at 1: 0.9438 / 0.822 / 2);
# 3-D, 10 pairs, at 2 and 3: 0.9295 / 1.069, 0.9300 / 1.090 (grid points at 2: 0.9287 / 1.107).
REFINE_REG = {2: 1.5, 3: 2.0}

LEVEL_NAMES = ("coarse", "working", "native")


@dataclass(frozen=True)
class RefineLevel:
    """One level of the refinement: where the velocity lives, where the similarity is measured."""

    name: str  # "coarse" | "working" | "native"
    iterations: int
    lr: float = 0.1


# Iterations per level of the default schedule, per dimension (``fast``: FAST_ITERATIONS below).
# A 2-D slice's iteration costs ~10 ms: 2-D runs 2x / 4x the 3-D coarse / working counts (measured
# above: 0.939 -> 0.945 mean Dice on the 2-D suite pairs, +0.9 s per pair at 1 thread).
DEFAULT_ITERATIONS = {
    2: {"coarse": 60, "working": 60, "native": 10},
    3: {"coarse": 30, "working": 15, "native": 10},
}
POINTS = 40_000  # random points per iteration of the working and native levels
# Squarings inside the refinement loops (the final integration uses the model's own, 7 by default):
# the velocity is optimised smooth and small per step, 5 squarings differ from 7 by < 0.01 voxel
# there and cost 30 % less per iteration.  3 instead of 4 (each squaring's backward is most of an
# iteration): in-process on the held-out suite, 10 3-D pairs, every pair within 0.002 Dice of 4
# squarings (mean 0.929 / EPE 1.10 mm both); 50 2-D pairs, mean Dice 0.946 both, no pair moved by 0.01.
REFINE_INT_STEPS = 3
# Up to this many working-grid voxels (a 2-D slice, a 3-D crop or organ), the working and native
# levels optimise the velocity on the working grid itself (finer deformations); beyond it (a whole
# head at 2 mm is 1.1 M voxels) the velocity stays on its half-resolution control grid, whose
# integration costs 8x less per iteration on the CPU.
FINE_CONTROL_VOXELS = 400_000
# ... and there the working level's Adam step (in voxels of the control grid) is scaled by
# the refinement factor (~2), so that a step moves the map as far in mm as on the half-resolution
# control grid; otherwise 15 + 10 steps of 0.1 fine voxels can move a small image's map by at most
# ~5 mm past the coarse level (per dimension).  Measured first with both fine levels scaled: fresh
# 3-D pair 3d_radial_13_labels_flair_native
# (session 24, a local expansion in a label phantom): Dice 0.906 -> 0.924, EPE 1.44 -> 0.84 mm (ANTs
# SyN 0.928 / 1.08; twice the iterations instead: 0.929 / 0.73 at 1.5x the time).  Held-out suite
# pairs 0-5 of every 3-D family in-process (30 pairs, against the code before): mean Dice 0.9259 ->
# 0.9282, EPE 1.009 -> 0.976 mm, 7 pairs up by more than 0.2 point (a B-spline label phantom 0.857 ->
# 0.880), 2 down (at most 0.3 point), none below no registration; the same seconds.  2-D: 203 pairs,
# +0.0003 Dice, EPE 0.735 -> 0.726 mm, 18 up / 5 down (one by 1.2 points): noise, left off there.
STEP_IN_MM = {2: False, 3: True}
# ... at the working level only: scaled at the native level too, a 1 mm MNI crop under a 5 mm-scale
# field (tests/stages/test_accuracy_guarantees.py, smoothness 0.25) ended 0.607 mm from the true map
# instead of 0.572 (the native level's larger steps overshoot a fine, noise-free field); the fresh
# radial pair above then gets 0.919 / 1.08 mm (both levels: 0.924 / 0.84).
# As it stands, the whole CLI on the held-out suite's 10 3-D pairs (with the session's affine changes):
# Dice 0.932 -> 0.934, EPE 0.89 -> 0.86 mm (benchmarks/results/held_out_3d.md, "Session 24").
STEP_LEVELS = ("working",)
# Compare the fixed and moving features at points where both are interpolated alike: continuous
# random points (working and native levels), the grid shifted by sub-voxel offsets in turn (coarse
# level: one random offset in each half-voxel cell, :func:`_grid_shifts`).  Sampling the moving
# features between voxels averages their noise, the fixed ones sampled on their own voxels keep
# theirs: any displacement with a fractional part then lowers the feature cost without aligning
# anything.  On an already aligned 2-D pair (MNI slice,
# gamma map) the cost at a uniform 0.5-voxel shift is 6.5 % below the identity's (0.1144 vs 0.1223)
# on grid points; with both sides interpolated at the same random offsets the identity is the lower
# (0.1076 vs 0.1109).  The refinement followed that bias: 0.5-1.2 mm of motion where the true map
# moves nothing.  Same construction as the NMI referee's random continuous points.
UNBIASED_SAMPLING = True
# The polish (:func:`polish`, the pipeline's ``polish`` stage after the do-no-harm gate): more
# iterations of the finest level, its feature cost minus POLISH_WEIGHT x the mutual information of the
# two images' intensities (Parzen, POLISH_BINS bins, at POLISH_POINTS of each iteration's random points).
# MIND compares local self-similarity patterns: where two anatomies really differ (two subjects, or two
# slices 3-5 mm apart) or a contrast is weak between grey and white matter, its normalised patterns match
# shapes but place tissue boundaries loosely; MI, from the same points, pulls each boundary onto the
# intensity class it belongs to.  It runs after the gate: an aligned pair (whose deformation the gate
# refuses) is never polished, and the NMI referee judged the features' deformation, not one fitted to
# intensities.  Measured (session 25, in-process, 2-D, at 30 iterations): benchmarks/slice_pairs.py's pairs
# (MNI slice z against slice z+-3/5 mm, 8 contrasts; no true map, GM/WM Dice) 0.777 -> 0.807 at 0.05, 0.819
# at 0.1, 0.846 at 0.2 (ANTs SyN 0.803); held-out suite pairs 0-9 of every 2-D family (50 pairs) Dice / EPE mm
# 0.9483 / 0.696 -> 0.9545 / 0.658 at 0.05, 0.9552 / 0.657 at 0.1, every family up in both, 0 pairs below no
# registration; 40 000 -> 10 000 MI points: the same Dice within 0.001 on 4 pairs, 1.1 s less per pair.
# Checked on the 50 pairs 10-19 of every 2-D family, with the stage's gate: 0.9459 / 0.767 -> 0.9514 / 0.733
# at 0.05, 0.9516 / 0.735 at 0.1, every family up in both, 2 pairs down by more than 0.2 point (3 at 0.1),
# none below no registration; +0.4 s per pair.  With the gate, the slice pairs above: 0.807 at 0.05 (30 or 60
# iterations), 0.823 at 0.1 (60), 0.821 at 0.2 (the gate refused three).  3-D (the native level, 10
# iterations; suite pairs 0-5 of every family, 30 pairs): at 0.1 without the gate 0.9277 / 0.985 -> 0.9282 /
# 0.971 but the MNI pairs lost (a T2-like one 0.939 -> 0.926); at 0.03 with the gate 0.9307 / 0.942, every
# family up in both, the worst pair -0.6 point, +1 s per pair; but the 1 mm demo/speed pair (MNI T1 against a
# T2-like copy under a smooth field, the whole head, the velocity on its 4 mm control grid) lost 0.7 point
# (GM/WM Dice 0.959 -> 0.952; feature cost +0.9 %, inside the gate's 1 %): off in 3-D for now.
# Session 26, on real anatomical differences again (12 slice pairs of a development draw, seed 777, apart from
# slice_pairs.py's frozen 24: 6 same-contrast, 3 gamma, 3 T2-like; ANTs SyN 0.839 on them, CC within a contrast),
# with the stage's gate loosened (stages.deformable.POLISH_TOLERANCE) and 60 iterations: GM/WM Dice 0.839 at
# 0.1, 0.851 at 0.15, 0.859 at 0.2, 0.867 at 0.3, 0.876 at 1.0 (0.828 at session 25's 0.1 / 30 / 1 %); the
# held-out suite's 50 2-D pairs 0-9 (in-process, benchmarks/suite_ab.py) Dice / EPE 0.9543 / 0.662 at session
# 25's setting -> 0.9549 / 0.656 at 0.2, 0.9538 / 0.669 at 0.3, 0.9500 / 0.745 at 1.0 (crop pairs lose first).
# 0.2 and 60 iterations: the real-anatomy gain, the suite kept.
POLISH_WEIGHT = {2: 0.2, 3: 0.0}
POLISH_ITERATIONS = {2: 60, 3: 10}
POLISH_BINS = 32
POLISH_POINTS = 10_000


@dataclass
class FinestLevel:
    """What the refinement's finest level worked with, kept for :func:`polish`."""

    level: RefineLevel
    images: tuple[torch.Tensor, torch.Tensor]  # fixed, moving (normalised intensities) ``(1, 1, *S_f)``
    features: tuple[torch.Tensor, torch.Tensor]  # their MIND, as the level sampled them
    inside: torch.Tensor  # ``(*S_f)`` bool: where points are drawn
    valid: torch.Tensor | None  # the moving field of view (:func:`valid_fov`) or None
    lam: float
    int_steps: int
    seed: int


def polish(
    v: torch.Tensor, finest: FinestLevel, iterations: int | None = None, weight: float | None = None
) -> torch.Tensor:
    """``iterations`` more steps of the finest level from ``v`` (:data:`POLISH_ITERATIONS`), minimising its
    feature cost minus ``weight`` (:data:`POLISH_WEIGHT`) x the intensities' mutual information."""
    nd = v.dim() - 2
    it = POLISH_ITERATIONS[nd] if iterations is None else int(iterations)
    w = POLISH_WEIGHT[nd] if weight is None else float(weight)
    if it <= 0 or w <= 0:
        return v
    level = dataclasses.replace(finest.level, iterations=it)
    g = torch.Generator().manual_seed(finest.seed + 101)
    return _point_refine(v, finest.features[0], finest.features[1], level, finest.lam, finest.int_steps,
                         finest.inside.flatten().float(), g, finest.valid, images=finest.images, mi_weight=w)


COST_POINTS = 100_000  # random continuous points of :func:`mind_cost` (the do-no-harm yardstick)
COST_SEED = 0


# ``fast``: the coarse level, then straight to the native level (no working level), fewer coarse
# iterations in 3-D.  Held-out suite, 10 3-D pairs in-process at one thread (mean Dice / EPE mm / CPU s
# per pair, at be95af6 with the affine polish on): default 0.929 / 0.94 / ~19; coarse x30 only (the
# fast mode before) 0.885 / 1.52 / 10.4, two pairs refused to no registration; coarse x15 + native x10
# 0.919 / 1.09 / 13.8, no pair refused.
# A 2-D slice at 1 mm has no native level: there fast is the coarse level at its default count.
FAST_ITERATIONS = {
    2: {"coarse": 60, "native": 10},
    3: {"coarse": 15, "native": 10},
}


def schedule(
    iterations: int | None = None, fast: bool = False, native: bool = True, *, ndim: int
) -> tuple[RefineLevel, ...]:
    """The refinement levels of an ``ndim``-D pair: the default, ``iterations`` per level when given,
    ``fast``: coarse and native only (:data:`FAST_ITERATIONS`); ``native=False`` drops that level."""
    if iterations is not None and iterations <= 0:
        return ()
    table = FAST_ITERATIONS[ndim] if fast else DEFAULT_ITERATIONS[ndim]
    names = ["coarse"] + ([] if fast else ["working"]) + (["native"] if native else [])
    return tuple(RefineLevel(n, int(iterations) if iterations is not None else table[n]) for n in names)


def _to_grid(feat: torch.Tensor, shape) -> torch.Tensor:
    if tuple(feat.shape[2:]) == tuple(shape):
        return feat
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(feat, size=tuple(shape), mode=mode, align_corners=True)


def pool_to(image: torch.Tensor, shape) -> torch.Tensor:
    """An image ``(B, C, *S)`` brought to a coarser grid ``shape`` with the same corners (anti-aliased)."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    nd = image.dim() - 2
    factor = max((a - 1) / max(b - 1, 1) for a, b in zip(image.shape[2:], shape, strict=False))
    if factor > 1.2:
        k = int(round(factor)) * 2 - 1
        pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
        image = pool(image, k, 1, k // 2, count_include_pad=False)
    return _to_grid(image, shape)


def refine_velocity(
    velocity: torch.Tensor,
    fixed_feat: torch.Tensor,
    moving_feat: torch.Tensor,
    iterations: int,
    smoothness: float = 1.0,
    lr: float = 0.1,
    int_steps: int = 7,
    mask: torch.Tensor | None = None,
    feature_grid: bool = False,
    generator: torch.Generator | None = None,
    moving_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Optimise a velocity ``(1, ndim, *S_v)`` (voxels of its own grid) so that the moving features,
    pulled through ``exp(velocity)``, match the fixed features.

    ``fixed_feat``/``moving_feat`` live on any grid with the velocity's corners; by default they are
    interpolated to the velocity's grid, with ``feature_grid=True`` the displacement is brought to
    theirs instead (the similarity at the features' resolution, the velocity staying coarse).
    ``mask`` (on the grid where the similarity is measured) restricts it (a fixed mask).
    ``generator``: the iterations compare the two feature maps at the grid shifted by sub-voxel
    offsets drawn from it (:func:`_grid_shifts`, :data:`UNBIASED_SAMPLING`); None: at the grid's own points.
    ``moving_valid``: ``(1, 1, *S_f)`` 1 where the moving features are the image's own (:func:`valid_fov`);
    a voxel counts only where its moved position lands there.
    """
    if iterations <= 0:
        return velocity
    shape = tuple(velocity.shape[2:])
    f_shape = tuple(fixed_feat.shape[2:]) if feature_grid else shape
    ff = _to_grid(fixed_feat, f_shape).detach()
    # channels-last: each sampled corner's channels in one cache line (values and gradients bitwise the same)
    fm = channels_last(_to_grid(moving_feat, f_shape).detach())
    v = velocity.detach().clone().requires_grad_(True)
    opt = Adam([v], lr=lr)
    lam = REFINE_REG[velocity.dim() - 2] * float(smoothness)
    shifts = [None] if generator is None else _grid_shifts(velocity.shape[1], generator, v.dtype, v.device)
    targets = [ff if j is None else warp(ff, j.expand(1, -1, *f_shape), padding_mode="border") for j in shifts]
    for it in range(int(iterations)):
        opt.zero_grad()
        disp = integrate_velocity(v, int_steps)
        d = disp if f_shape == shape else resize_field(disp, f_shape)
        j, target = shifts[it % len(shifts)], targets[it % len(shifts)]
        dj = d if j is None else d + j
        moved = warp(fm, dj)
        m = mask
        if moving_valid is not None:
            landed = (warp(moving_valid, dj.detach()) > 0.99).float()
            m = landed if mask is None else mask * landed
        loss = feature_mse(target, moved, mask=m) + lam * gradient_l2(disp)
        loss.backward()
        opt.step()
    return v.detach()


def _grid_shifts(nd: int, generator: torch.Generator, dtype, device) -> list[torch.Tensor]:
    """``2**nd`` sub-voxel shifts ``(1, nd, 1, ...)``, one in each half-voxel cell of ``[-0.5, 0.5)**nd``
    (stratified: uniform over the voxel as a whole): the coarse level's comparison points, the grid
    shifted by each in turn, the fixed features pulled to each once."""
    cells = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=dtype)] * nd).view(-1, nd)
    u = torch.rand(cells.shape, generator=generator, dtype=dtype)
    return [((c + x) / 2 - 0.5).view(1, nd, *([1] * nd)).to(device) for c, x in zip(cells, u, strict=True)]


def mind_cost(
    fixed_feat: torch.Tensor, moving_feat: torch.Tensor, disp: torch.Tensor | None, mask: torch.Tensor | None = None
) -> float:
    """Feature MSE of the moving features pulled through ``disp`` (None: identity), on the same grid
    (features beyond the grid's edge repeat the edge): the do-no-harm yardstick of the deformation."""
    with torch.no_grad():
        if not UNBIASED_SAMPLING:
            if disp is not None:
                moving_feat = warp(moving_feat, disp.to(moving_feat.dtype), padding_mode="border")
            return float(feature_mse(fixed_feat, moving_feat, mask=mask))
        # both maps interpolated at the same random continuous points (see UNBIASED_SAMPLING): on the
        # grid's own points the identity would compare unsmoothed moving features, any fractional
        # displacement smoothed ones, and look worse than it is
        nd, shape, dev = fixed_feat.dim() - 2, fixed_feat.shape[2:], fixed_feat.device
        g = torch.Generator().manual_seed(COST_SEED)
        top = torch.tensor([n - 1 for n in shape], dtype=fixed_feat.dtype).view(nd, 1)
        pts = (torch.rand((nd, COST_POINTS), generator=g, dtype=fixed_feat.dtype) * top).to(dev)
        pts = pts.view(1, nd, COST_POINTS, *([1] * (nd - 1)))
        target = sample(fixed_feat, pts, padding_mode="border")
        q = pts if disp is None else pts + sample(disp.to(fixed_feat.dtype), pts, padding_mode="border")
        moved = sample(moving_feat, q, padding_mode="border")
        weight = None if mask is None else sample(mask.to(fixed_feat.dtype), pts, mode="nearest")
        return float(feature_mse(target, moved, mask=weight))


def _point_refine(
    v: torch.Tensor,
    fixed_fine: torch.Tensor,
    moving_fine: torch.Tensor,
    level: RefineLevel,
    lam: float,
    int_steps: int,
    weight: torch.Tensor,
    generator: torch.Generator,
    moving_valid: torch.Tensor | None = None,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
    mi_weight: float = 0.0,
) -> torch.Tensor:
    """Velocity on its own (control) grid, similarity on a finer grid's features (same corners) at
    random points drawn every iteration uniformly in the bounding box of ``weight`` (flat, 1 inside the
    object or mask, 0 outside) and weighted by it.  The draws are continuous positions scaled to the
    box, so two near-identical inputs (a .nii.gz and its .mha twin) get the same points.
    ``moving_valid``: ``(1, 1, *S_f)`` (:func:`valid_fov`): a point counts only where it lands in it.
    ``images`` (fixed, moving intensities on the fine grid) and ``mi_weight``: minus ``mi_weight`` x their
    mutual information at :data:`POLISH_POINTS` of the points joins the cost (:func:`polish`)."""
    nd = v.shape[1]
    f_shape = fixed_fine.shape[2:]
    # fine voxel -> velocity-grid voxel, per axis (same corners)
    to_v = torch.tensor([(a - 1) / max(b - 1, 1) for a, b in zip(v.shape[2:], f_shape, strict=False)], device=v.device)
    to_v = to_v.view(1, nd, 1, *([1] * (nd - 1)))
    n_pts = POINTS
    inside = weight.view(f_shape) > 0
    nz = inside.nonzero()
    lo, hi = nz.amin(0).to(v.dtype), nz.amax(0).to(v.dtype)  # the object's bounding box
    ff_flat = None if UNBIASED_SAMPLING else fixed_fine.flatten(2)  # (1, C, N)
    strides = torch.tensor([math.prod(f_shape[i + 1 :]) for i in range(nd)], device=v.device)
    moving_fine = channels_last(moving_fine)  # sampled at scattered points: each corner's channels at once
    if UNBIASED_SAMPLING:
        fixed_fine = channels_last(fixed_fine)  # sampled at the same kind of points
    v = v.detach().clone().requires_grad_(True)
    opt = Adam([v], lr=level.lr)
    for _ in range(level.iterations):
        idx, pick = random_box_voxels(lo, hi, strides, n_pts, generator, v.dtype)  # (n, N) fine voxels
        if UNBIASED_SAMPLING:  # continuous points: the fixed features interpolated as the moving ones are
            idx = idx + (torch.rand(idx.shape, generator=generator, dtype=v.dtype).to(v.device) - 0.5)
        pts_f = idx.view(1, nd, n_pts, *([1] * (nd - 1)))
        opt.zero_grad()
        disp = integrate_velocity(v, int_steps)
        d_pts = sample(disp, pts_f * to_v, padding_mode="border")  # (1, n, N, 1[, 1]) velocity voxels
        q = pts_f + d_pts / to_v
        moved = sample(moving_fine, q)  # (1, C, N, 1[, 1])
        if ff_flat is None:  # UNBIASED_SAMPLING
            target = sample(fixed_fine, pts_f, padding_mode="border")
        else:
            target = ff_flat[:, :, pick].view_as(moved)
        w = weight[pick].view(1, 1, n_pts, *([1] * (nd - 1)))
        if moving_valid is not None:
            w = w * (sample(moving_valid, q.detach()) > 0.99).float()
        err = ((moved - target).pow(2).mean(1, keepdim=True) * w).sum() / w.sum().clamp_min(1.0)
        if images is not None and mi_weight > 0:  # the polish: minus the intensities' MI
            k = min(POLISH_POINTS, n_pts)  # the points are random: the first k are a random subset
            pa, pq = pts_f[:, :, :k], q[:, :, :k]
            a = sample(images[0], pa, padding_mode="border").flatten()
            b = sample(images[1], pq).flatten()
            err = err - mi_weight * parzen_mutual_information(a, b, w[:, :, :k].flatten(), bins=POLISH_BINS)
        loss = err + lam * gradient_l2(disp)
        loss.backward()
        opt.step()
    return v.detach()


def _native_features(fine, levels) -> Future | None:
    """MIND of the native-resolution images, computed by a worker thread while the coarser levels
    run (on the CPU with two or more threads: their 3-D sampling keeps one core busy and leaves the
    other mostly idle; the native features are the refinement's largest single cost, ~3.5 s of the
    1 mm MNI pair's 16 s at two threads).  None: computed in line, when the native level starts."""
    if (
        fine is None
        or fine[0].device.type != "cpu"
        or not any(lv.name == "native" and lv.iterations > 0 for lv in levels)
    ):
        return None
    if torch.get_num_threads() < 2:
        return None

    def work():
        with torch.no_grad():
            return mind_ssc(fine[0], channels_last=UNBIASED_SAMPLING), mind_ssc(fine[1], channels_last=True)

    return _WORKER.submit(with_caller_threads(work))


_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unireg-native-mind")


def refine_multilevel(
    velocity: torch.Tensor,
    fixed_w: torch.Tensor,
    moving_w: torch.Tensor,
    levels: Sequence[RefineLevel],
    *,
    smoothness: float = 1.0,
    int_steps: int = 7,
    fine: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    fixed_mask_w: torch.Tensor | None = None,
    fixed_mask_fine: torch.Tensor | None = None,
    on_level: Callable[[RefineLevel], None] | None = None,
    seed: int = 0,
    moving_fov_w: torch.Tensor | None = None,
    moving_fov_fine: torch.Tensor | None = None,
    keep_finest: Callable[[FinestLevel], None] = lambda finest: None,
    control_voxels: int | None = None,
) -> torch.Tensor:
    """Refine ``velocity`` ``(1, n, *S_v)`` level by level, on its own grid (a control grid: the
    similarity is measured at each level's resolution, the displacement brought to it).

    ``fixed_w``/``moving_w``: ``(1, 1, *S_w)`` normalised images on the working grid (the moving one
    already through the affine).  ``fine``: ``(fixed_fine, moving_fine, factor)`` images ``(1, 1, *S_f)``
    on the fine grid (working grid subdivided by ``factor``), or None to skip the native level.
    ``fixed_mask_*``: where the similarity is measured (as ANTs' ``-x``); the images are not zeroed.
    ``moving_fov_*``: ``(1, 1, *S)`` the moving image's field of view (1 inside) on the working and
    fine grids (:data:`FOV_AWARE`); None: every point counts.  ``keep_finest``: called with each
    working/native level's :class:`FinestLevel` as it ends (the last call is the finest; :func:`polish`).
    ``control_voxels``: the size that decides whether the control grid refines to the working grid
    (:data:`FINE_CONTROL_VOXELS`); default the working grid's.
    """
    lam = REFINE_REG[velocity.dim() - 2] * float(smoothness)
    v = velocity
    int_steps = min(int_steps, REFINE_INT_STEPS)
    w_shape = tuple(fixed_w.shape[2:])
    native_mind = _native_features(fine, levels)
    step = 1.0  # the levels' step scale once the control grid has been refined (STEP_IN_MM)
    for level in levels:
        if level.iterations <= 0:
            continue
        if on_level is not None:
            on_level(level)
        if level.name == "coarse":
            shape = tuple(v.shape[2:])
            ff = mind_ssc(pool_to(fixed_w, shape))
            fm = mind_ssc(pool_to(moving_w, shape), channels_last=True)  # sampled: laid out for it
            mask = None if fixed_mask_w is None else (pool_to(fixed_mask_w, shape) > 0.5).float()
            gen = torch.Generator().manual_seed(int(seed) + len(level.name)) if UNBIASED_SAMPLING else None
            valid = None if moving_fov_w is None else valid_fov(moving_fov_w, shape)
            v = refine_velocity(
                v, ff, fm, level.iterations, smoothness, level.lr, int_steps, mask, generator=gen, moving_valid=valid
            )
        elif level.name in ("working", "native"):
            size = math.prod(w_shape) if control_voxels is None else int(control_voxels)
            if size <= FINE_CONTROL_VOXELS and tuple(v.shape[2:]) != w_shape:
                if STEP_IN_MM[v.dim() - 2]:  # the same step in mm on the finer control grid
                    step = max((a - 1) / max(b - 1, 1) for a, b in zip(w_shape, v.shape[2:], strict=True))
                v = resize_field(v, w_shape)  # small images: the control grid refines to the working grid
            if step != 1.0 and level.name in STEP_LEVELS:
                level = dataclasses.replace(level, lr=level.lr * step)
            if level.name == "working":
                fixed_l, moving_l, mask_l, fov_l = fixed_w, moving_w, fixed_mask_w, moving_fov_w
            elif fine is None:
                continue
            else:
                fixed_l, moving_l, _ = fine
                mask_l, fov_l = fixed_mask_fine, moving_fov_fine
            inside = fixed_l[0, 0] > 0.02 if mask_l is None else mask_l[0, 0] > 0.5
            inside = torch.where(inside.sum() < 100, torch.ones_like(inside), inside)  # no host read
            g = torch.Generator().manual_seed(int(seed) + len(level.name))
            if level.name == "native" and native_mind is not None:
                feats = native_mind.result()
            else:
                feats = (mind_ssc(fixed_l, channels_last=UNBIASED_SAMPLING), mind_ssc(moving_l, channels_last=True))
            valid = None if fov_l is None else valid_fov(fov_l, tuple(fixed_l.shape[2:]))
            v = _point_refine(v, feats[0], feats[1], level, lam, int_steps, inside.flatten().float(), g, valid)
            keep_finest(FinestLevel(level, (fixed_l, moving_l), feats, inside, valid, lam, int_steps, int(seed)))
        else:
            raise ValueError(f"unknown refinement level {level.name!r}")
    return v
