"""Stage ``prepare``: intensities normalised, the working grid and the native (fine) grid chosen."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..align.foreground import object_box
from ..align.referee import Referee
from ..align.refine import MIND_FOOTPRINT
from ..errors import UniRegError
from ..intensity import normalize_tensor
from ..masks import mask_on_grid
from ..noise import denoise
from ..preprocess import as_tensor, to_working_grid
from ..spatial.frames import affine_nd
from ..spatial.grid import apply_matrix
from ..spatial.world import cropped_grid, native_factor, subdivided_grid, working_grid
from .state import State

__all__ = [
    "prepare",
    "stage_threads",
    "SMALL_2D_VOXELS",
    "moving_on",
    "moving_mask_on",
    "fov_covers",
    "moving_fov",
    "affine_map",
    "check_working_size",
    "MIN_WORKING_SIDE",
]

# Smallest working-grid side, per dimensionality, that features, affine pooling and the Jacobian's
# torch.gradient accept (3-D MIND pools with a 5-voxel kernel; 2-D needs 2 for finite differences;
# measured with the mind extractor).  Thinner fields of view are a one-line UniRegError naming the file.
MIN_WORKING_SIDE = {2: 2, 3: 5}
# The local gate's referee (stages.deformable.local_gate): points over the fixed grid, at most
# LOCAL_PER_VOXEL per voxel (a 2-D slice has too few voxels for a patch's histogram at one each).
LOCAL_POINTS = 1_500_000
LOCAL_PER_VOXEL = 8.0
# A small 2-D pair (working grid up to this many pixels) is registered on one torch thread.  Its
# ~1 s is thousands of ops on tensors of ~40 000 values; with two threads each op wakes the other
# thread through the kernel (OpenMP waits passively: unireg/__init__.py) and the pair took longer.
# Whole `unireg register` of a 2-D suite pair (MNI slice, 197x233 working pixels; 2026-11-29, two
# runs each): registration 1.54-1.67 s with two threads (refinement 1.16-1.26 s), 0.94 s with one
# (0.63 s); the whole command 3.4-3.6 s vs 2.9 s.  At the shipped 2-D model's largest working grid
# (256x256: a 360x360 mm slice, in-process, QC on) 1.42-1.51 s with one thread, 2.12-2.29 s with two.
# A small 3-D pair (56x64x52 working voxels) still gains from two threads (6.1-6.5 s vs 8.3-8.4 s),
# so 3-D keeps the caller's count, and so does a 2-D model with a larger working grid (not measured).
SMALL_2D_VOXELS = 131_072
# The working grid covers the fixed image's object (the user's fixed mask, or the voxels above half the
# Otsu threshold), OBJECT_MARGIN_MM wider on each side, rather than its whole field of view: air around a
# head, and the corners of an oblique field of view seen along world axes, cost every stage's time and
# carry nothing to align.  The warp outside the box repeats its edge values (resample.py samples the
# working fields with border padding).  3-D only (a 2-D slice is registered in about a second); a box
# that would save less than 10 % of the grid is not taken (the grid is then exactly as before).
OBJECT_MARGIN_MM = {2: None, 3: 12.0}


def check_working_size(w_shape, w_aff4, path, which: str) -> None:
    need = MIN_WORKING_SIDE[len(w_shape)]
    if min(w_shape) >= need:
        return
    sp = float(np.linalg.norm(np.asarray(w_aff4)[:3, 0]))
    dims = "x".join(str(n) for n in w_shape)
    raise UniRegError(
        f"{which} image's field of view is too small to register: {dims} voxels on the {sp:g} mm working grid, "
        f"at least {need} per axis ({(need - 1) * sp:g} mm) needed",
        path,
    )


@contextmanager
def stage_threads(s: State):
    """The torch thread count for the stages after ``prepare``: one for a small 2-D pair on the CPU
    (:data:`SMALL_2D_VOXELS`), the caller's otherwise; the caller's is restored on the way out."""
    before = torch.get_num_threads()
    s.caller_threads = before
    small = s.nd == 2 and s.device.type == "cpu" and math.prod(s.w_shape) <= SMALL_2D_VOXELS
    if not small or before < 2:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare(s: State) -> None:
    """Fill ``fixed_n``, ``moving_n``, the working grid and ``fixed_w``, and the native grid."""
    s.announce("preprocess")
    with s.timer("preprocess"):
        # percentiles inside the masks: a bright artefact outside must not squash the anatomy's range
        # on the registration's device from here on: each image crosses to it once, as it was read
        fm, mm = s.opts.fixed_mask, s.opts.moving_mask
        fmv, mmv = _mask_values(fm, s.device), _mask_values(mm, s.device)
        s.fixed_n = normalize_tensor(as_tensor(s.fixed.data[0]).to(s.device), mask=fmv)
        s.moving_n = normalize_tensor(as_tensor(s.moving.data[0]).to(s.device), mask=mmv)
        if s.opts.denoise:  # a noisy image smoothed for every stage's comparisons (the outputs warp the image as read)
            s.fixed_n, s.noise["fixed"] = denoise(s.fixed_n, s.fixed.spacing, fmv)
            s.moving_n, s.noise["moving"] = denoise(s.moving_n, s.moving.spacing, mmv)
        s.w_shape, s.w_aff4 = working_grid(s.fixed.spatial_shape, s.fixed.affine, **s.model.working)
        check_working_size(s.w_shape, s.w_aff4, s.fixed.path, "fixed")
        s.fov_w_shape = tuple(s.w_shape)
        s.fixed_w = to_working_grid(s.fixed_n, s.fixed.affine, s.fixed.spacing, s.w_shape, s.w_aff4)
        w_spacing = float(np.linalg.norm(s.w_aff4[:3, 0]))
        margin = OBJECT_MARGIN_MM[s.nd]
        if margin is not None:
            user = None if fm is None else mask_on_grid(fm, s.w_shape, s.w_aff4).to(s.device)
            box = object_box(s.fixed_w[0], int(math.ceil(margin / w_spacing)), mask=user)
            if box is not None and min(b.stop - b.start for b in box) >= MIN_WORKING_SIDE[s.nd]:
                s.w_shape, s.w_aff4 = cropped_grid(s.w_aff4, box)
                s.fixed_w = s.fixed_w[(slice(None), *box)].contiguous()
        s.fine_factor = native_factor(list(s.fixed.spacing[: s.nd]), w_spacing, s.w_shape, s.opts.native_budget_voxels)
        s.f_shape, s.f_aff4 = subdivided_grid(s.w_shape, s.w_aff4, s.fine_factor)


def _mask_values(mask, device: torch.device) -> torch.Tensor | None:
    """A user mask's ``nonzero = use`` as a bool tensor on ``device`` (None without a mask)."""
    return None if mask is None else torch.from_numpy(np.asarray(mask.data[0]) != 0).to(device)


def affine_map(t_nd: np.ndarray):
    """``world_map`` (as for :func:`unireg.spatial.world.pull`) carrying fixed-frame world points through
    the fixed->moving affine ``t_nd`` (on the points' device)."""
    t_mat = torch.as_tensor(t_nd, dtype=torch.float32)

    def world_map(world, rows=None):
        return apply_matrix(t_mat.to(world.device), world)

    return world_map


def moving_on(s: State, shape, aff4, t_nd: np.ndarray) -> torch.Tensor:
    """The normalised moving image through the affine ``t_nd`` onto a grid of the fixed frame (on the
    registration's device)."""
    return to_working_grid(s.moving_n, s.moving.affine, s.moving.spacing, shape, aff4, world_map=affine_map(t_nd))


def moving_mask_on(s: State, shape, aff4) -> torch.Tensor:
    """The user's moving mask seen from a grid of the fixed frame through the current affine (bool, CPU)."""
    return mask_on_grid(s.opts.moving_mask, shape, aff4, world_map=affine_map(s.t_nd))


def referee(s: State, local: bool = False, inverse: bool = False) -> Referee:
    """The do-no-harm referee of this pair (NMI at the native grids; built once).  ``local``: the local
    gate's, with more points (``LOCAL_POINTS``, up to ``LOCAL_PER_VOXEL`` per fixed voxel) so that each
    of its patches holds a few thousand.  ``inverse``: the referee seen from the moving image (its
    points on the moving grid; :class:`Referee` ``inverse``), which scores inverse displacements."""
    if inverse:
        if s.inverse_referee is None:
            s.inverse_referee = _new_referee(s, inverse=True)
        return s.inverse_referee
    if local:
        if s.local_referee is None:
            s.local_referee = _new_referee(s, points=LOCAL_POINTS, per_voxel=LOCAL_PER_VOXEL)
        return s.local_referee
    if s.referee is None:
        s.referee = _new_referee(s)
    return s.referee


def _new_referee(s: State, inverse: bool = False, **kw) -> Referee:
    mask = moving_mask = None
    if s.opts.fixed_mask is not None:
        mask = mask_on_grid(s.opts.fixed_mask, s.fixed.spatial_shape, s.fixed.affine).cpu().numpy()
    if s.opts.moving_mask is not None:
        moving_mask = mask_on_grid(s.opts.moving_mask, s.moving.spatial_shape, s.moving.affine).cpu().numpy()
    own, other = (s.fixed_n, s.fixed.affine, mask), (s.moving_n, s.moving.affine, moving_mask)
    if inverse:  # points on the moving image, the fixed image resampled
        own, other = other, own
    return Referee(
        own[0],
        own[1],
        other[0],
        other[1],
        s.nd,
        device=s.device,
        mask=own[2],
        seed=s.opts.seed,
        moving_mask=other[2],
        inverse=inverse,
        **kw,
    )


def fov_covers(s: State) -> bool:
    """Whether the moving image's field of view, through the affine, covers the whole fixed working
    grid with the features' footprint to spare at the coarsest level (every point counts then, and
    the field of view need not be worked out on the grids).  The grid's corners suffice: an affine
    carries the box to a parallelepiped, and the moving box is convex."""
    nd = s.nd
    w = affine_nd(s.w_aff4, nd)
    # the coarsest level: the velocity's grid; with no deformation (--transform rigid|affine) the shipped
    # networks' (half the working grid's resolution), so that the score sees what a refused deformation's does
    v_shape = s.velocity.shape[2:] if hasattr(s, "velocity") else [(n + 1) // 2 for n in s.w_shape]
    coarse_mm = float(np.max(np.linalg.norm(w[:nd, :nd], axis=0))) * max(
        (a - 1) / max(b - 1, 1) for a, b in zip(s.w_shape, v_shape, strict=False)
    )
    margin_mm = MIND_FOOTPRINT * coarse_mm + coarse_mm  # + one voxel of the pooled edge
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in s.w_shape], indexing="ij")).reshape(nd, -1).T
    world = corners @ w[:nd, :nd].T + w[:nd, nd]
    moved = world @ np.asarray(s.t_nd, dtype=np.float64)[:nd, :nd].T + np.asarray(s.t_nd, dtype=np.float64)[:nd, nd]
    m = affine_nd(s.moving.affine, nd)
    vox = (moved - m[:nd, nd]) @ np.linalg.inv(m[:nd, :nd]).T
    margin = margin_mm / np.asarray(s.moving.spacing[:nd], dtype=np.float64)
    hi = np.asarray(s.moving.spatial_shape[:nd], dtype=np.float64) - 1 - margin
    return bool(np.all(vox >= margin) and np.all(vox <= hi))


def moving_fov(s: State, shape, aff4) -> torch.Tensor:
    """``(1, 1, *shape)`` float 0/1: the voxels of a grid of the fixed frame whose position, through the
    affine, lies inside the moving image's grid (where a linear interpolation of it uses its own
    voxels only), on the registration's device.  Worked out from the matrices, axis by axis."""
    nd = s.nd
    to_moving = np.linalg.inv(affine_nd(s.moving.affine, nd)) @ np.asarray(s.t_nd, np.float64) @ affine_nd(aff4, nd)
    axes = [torch.arange(n, dtype=torch.float64, device=s.device) for n in shape]
    inside = torch.ones(tuple(shape), dtype=torch.bool, device=s.device)
    for j, n_j in enumerate(s.moving.spatial_shape[:nd]):
        c = torch.full((1,) * nd, float(to_moving[j, nd]), dtype=torch.float64, device=s.device)
        for k in range(nd):
            c = c + float(to_moving[j, k]) * axes[k].view(*[-1 if i == k else 1 for i in range(nd)])
        inside &= (c >= -1e-4) & (c <= n_j - 1 + 1e-4)
    return inside.float()[None, None]
