"""Affine pre-alignment: centre-of-mass initialisation, then an affine optimised on frozen features.

The transform ``T`` maps fixed world points (RAS mm) to moving world points, as ITK does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..losses import feature_mse, feature_mse_each
from ..losses.similarity import parzen_mutual_information
from ..spatial.frames import voxel_to_world
from ..spatial.grid import apply_matrix, channels_last, identity_coords, random_box_voxel_draws, sample
from ..spatial.world import affine_nd, pooled_affine
from .optim import Adam

__all__ = [
    "center_of_mass_world",
    "center_of_mass_init",
    "optimize_affine",
    "polish_affine",
    "mi_affine",
    "affine_cost",
    "rotation_starts",
    "principal_axes_starts",
    "ROTATION_START_DEGREES",
    "structure_mask",
    "SHEAR_SCALE_PENALTY",
]

# weight of ||A - I||_F^2 next to the feature MSE (typically 0.01-0.05)
SHEAR_SCALE_PENALTY = 1e-3


def center_of_mass_world(image: torch.Tensor, affine4: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (world mm) of ``image`` ``(*S)`` (non-negative intensities)."""
    w = image.clamp_min(0).double()
    coords = identity_coords(image.shape, device=image.device, dtype=torch.float64)
    total = w.sum().clamp_min(1e-12)
    c_vox = (coords * w).flatten(1).sum(1) / total  # on the image's device: n numbers come back
    return voxel_to_world(c_vox.cpu().numpy()[None], affine4)[0]


def center_of_mass_init(fixed: torch.Tensor, fixed_affine4, moving: torch.Tensor, moving_affine4) -> np.ndarray:
    """Translation (as an (n+1)-square matrix) taking the fixed centroid onto the moving centroid."""
    nd = fixed.dim()
    t = np.eye(nd + 1)
    t[:nd, nd] = center_of_mass_world(moving, moving_affine4) - center_of_mass_world(fixed, fixed_affine4)
    return t


def pool(x: torch.Tensor, f: int) -> torch.Tensor:
    """Average pooling ``(B, C, *S)`` by ``f`` (ceil mode): the grid of ``spatial.world.pooled_affine``."""
    if f == 1:
        return x
    return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, f, f, ceil_mode=True)


def _frame(fixed_grid4: np.ndarray, shape, device) -> tuple[torch.Tensor, float]:
    """Centre (world mm, on ``device``) and half the largest extent (mm) of the fixed grid: the affine's
    parameter frame.  Worked out on the host (on a GPU: one copy, no read-back per axis)."""
    nd = len(shape)
    wf = torch.as_tensor(affine_nd(fixed_grid4, nd), dtype=torch.float64)
    centre_vox = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    centre = wf[:nd, :nd] @ centre_vox + wf[:nd, nd]
    half_extent = float(max((n - 1) * float(torch.linalg.norm(wf[:nd, i])) for i, n in enumerate(shape))) / 2
    return centre.to(device), half_extent


def _level_maps(fixed_grid4: np.ndarray, moving_grid4: np.ndarray, nd: int, factor: int, device):
    """``(fixed voxel -> world, world -> moving voxel)`` (float64, on ``device``) of the grids pooled by
    ``factor``: one host-to-device copy for both (on a GPU each blocking copy waits for the queue)."""
    wf = affine_nd(pooled_affine(fixed_grid4, nd, factor), nd)
    wm_inv = np.linalg.inv(affine_nd(pooled_affine(moving_grid4, nd, factor), nd))
    both = torch.as_tensor(np.stack([wf, wm_inv]), dtype=torch.float64, device=device)
    return both[0], both[1]


def _parameters(t0: torch.Tensor, centre: torch.Tensor, half_extent: float, rigid: bool = False):
    """Trainable ``(lin, trans)`` for ``K`` starts ``t0`` ``(K, n+1, n+1)`` and the function giving their
    matrices: ``t0 @ [[A, c - A c + trans * half_extent], [0, 1]]`` (about the fixed field-of-view centre
    ``c``; the translation scaled by its size so one learning rate fits every image), ``A = I + lin``, or
    with ``rigid`` the rotation ``A = exp(lin - lin^T)`` (the exponential of a skew-symmetric matrix: a
    rotation for any ``lin``, ``I`` at the start; ANTs' and elastix's rigid transforms are the same
    group, parameterised by Euler angles or a versor)."""
    k, nd = t0.shape[0], t0.shape[1] - 1
    dev = t0.device
    lin = torch.zeros(k, nd, nd, dtype=torch.float64, device=dev, requires_grad=True)
    trans = torch.zeros(k, nd, dtype=torch.float64, device=dev, requires_grad=True)
    eye = torch.eye(nd, dtype=torch.float64, device=dev)
    bottom = torch.eye(nd + 1, dtype=torch.float64, device=dev)[nd:].expand(k, 1, nd + 1)

    def matrix() -> torch.Tensor:  # (K, n+1, n+1)
        a = torch.linalg.matrix_exp(lin - lin.transpose(-1, -2)) if rigid else eye + lin
        top = torch.cat([a, (centre - a @ centre + trans * half_extent).unsqueeze(-1)], dim=-1)
        return t0 @ torch.cat([top, bottom], dim=1)

    return lin, trans, matrix


def _penalty(rigid: bool) -> float:
    """Weight of the pull towards the start's linear part (``SHEAR_SCALE_PENALTY``); none for a rigid
    transform, which has no shear or scale to hold back."""
    return 0.0 if rigid else SHEAR_SCALE_PENALTY


def _sampling_box(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lo, hi, strides)`` for :func:`random_box_voxel_draws`: the box (voxel indices, float64) around
    the voxels where ``weight > 0`` (at least one), and the grid's C-order strides.  Found per axis
    from the slices that hold any such voxel: no list of the voxels (``nonzero``: a million rows on a
    working grid, and on a GPU a wait for its length)."""
    inside = weight > 0
    shape = weight.shape
    lo, hi = [], []
    for axis, n in enumerate(shape):
        hit = inside.movedim(axis, 0).reshape(n, -1).any(1).to(torch.uint8)
        lo.append(hit.argmax())  # the first slice that holds one (argmax: the first of equal maxima)
        hi.append(n - 1 - hit.flip(0).argmax())
    strides = torch.tensor([math.prod(shape[i + 1 :]) for i in range(len(shape))], device=weight.device)
    return torch.stack(lo).double(), torch.stack(hi).double(), strides


def polish_affine(
    fixed_feat: torch.Tensor,
    fixed_grid4: np.ndarray,
    moving_feat: torch.Tensor,
    moving_grid4: np.ndarray,
    init: np.ndarray,
    iterations: int = 30,
    lr: float = 0.005,
    points: int = 40_000,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    seed: int = 0,
    rigid: bool = False,
) -> np.ndarray:
    """Refine one affine ``init`` on finer features than :func:`optimize_affine`'s pyramid reaches, at
    ``points`` random fixed voxels drawn afresh every iteration inside the box of the fixed structure
    (as elastix's random sampler does: an iteration costs the same at any resolution).

    Same conventions, parameterisation and loss as :func:`optimize_affine` (feature MSE over fixed
    voxels with structure, inside ``fixed_mask``, whose mapped position falls inside the moving grid
    and ``moving_mask``; the same weak pull towards ``init``'s linear part).  ``rigid``: a rotation and a
    translation from ``init`` (:func:`_parameters`).
    """
    nd = fixed_feat.dim() - 2
    dev = fixed_feat.device
    shape = tuple(fixed_feat.shape[2:])
    maps = np.stack([affine_nd(fixed_grid4, nd), np.linalg.inv(affine_nd(moving_grid4, nd))])
    wf, wm_inv = torch.as_tensor(maps, dtype=torch.float64, device=dev)  # one copy for both
    t0 = torch.as_tensor(np.asarray(init), dtype=torch.float64, device=dev).reshape(1, nd + 1, nd + 1)
    centre, half_extent = _frame(fixed_grid4, shape, dev)
    lin, trans, matrix = _parameters(t0, centre, half_extent, rigid)
    opt = Adam([lin, trans], lr=lr)
    weight = structure_mask(fixed_feat)[0, 0]
    if fixed_mask is not None:
        fm_ = fixed_mask.to(dev).float()
        weight = weight * fm_ if (weight * fm_).sum() > 0 else fm_
    lo, hi, strides = _sampling_box(weight)
    ff_rows, w_flat = fixed_feat[0].flatten(1).t().contiguous(), weight.flatten()  # a voxel's channels in a row
    moving_feat = channels_last(moving_feat)
    ones = torch.ones_like(moving_feat[:, :1])
    mov_in = None if moving_mask is None else moving_mask.to(dev).to(moving_feat.dtype)[None, None]
    g = torch.Generator().manual_seed(int(seed))
    idx_all, pick_all = random_box_voxel_draws(lo, hi, strides, points, int(iterations), g, torch.float64)
    for idx, pick in zip(idx_all, pick_all, strict=True):  # (n, N) fixed voxels, their flat indices
        opt.zero_grad()
        m = (wm_inv @ matrix() @ wf)[0]
        coords = apply_matrix(m, idx).float().view(1, nd, points, *([1] * (nd - 1)))
        warped = sample(moving_feat, coords)  # (1, C, N, 1[, 1])
        inside = sample(ones, coords.detach()) > 0.99
        if mov_in is not None:
            inside = inside & (sample(mov_in, coords.detach()) >= 0.5)
        w = w_flat[pick].view_as(inside[:, 0:1]) * inside.detach().float()
        target = ff_rows[pick].t().reshape(warped.shape)
        loss = feature_mse_each(target, warped, w).sum() + _penalty(rigid) * (lin * lin).sum()
        loss.backward()
        opt.step()
    return matrix().detach().cpu().numpy()[0]


# mi_affine skips a level whose fixed grid has fewer voxels than this many per joint-histogram bin:
# on a 24^3 phantom at 1.5 mm (12^3 at its coarse level, ~1.7 voxels per bin) MI moved an affine 0.34 ->
# 0.66 mm from a known 3 mm shift, and the referee, on as few voxels, accepted it.
MI_MIN_VOXELS_PER_BIN = 8


def mi_affine(
    fixed: torch.Tensor,
    fixed_grid4: np.ndarray,
    moving: torch.Tensor,
    moving_grid4: np.ndarray,
    init: np.ndarray,
    levels: tuple[tuple[int, int], ...] = ((2, 40), (1, 25)),
    lr: float = 0.01,
    points: int = 10_000,
    bins: int = 32,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    seed: int = 0,
    rigid: bool = False,
    average: float = 0.0,
) -> np.ndarray:
    """Refine one affine ``init`` (fixed world -> moving world) by maximising the mutual information of
    the two images' *intensities* (Mattes-style: Gaussian Parzen histograms, ``points`` random fixed
    voxels drawn afresh every iteration, as ANTs' and elastix's affine stages do).

    Why, next to the feature cost: MIND compares self-similarities along the grid's axes, so a moving
    image turned against the fixed one matches it nowhere exactly and the feature cost's minimum pulls
    the rotation towards none (a body phantom turned by 16 degrees: the feature cost's optimum, even
    started at the true affine, kept ~3 degrees of it).  Intensity MI does not depend on orientation.

    ``fixed`` / ``moving``: ``(*S)`` normalised intensities on their working grids (``fixed_grid4`` /
    ``moving_grid4``); ``levels``: (pooling factor, iterations), coarse to fine, the step size falling
    from ``lr`` to a tenth over each level; fixed voxels inside ``fixed_mask`` (all when None) whose
    mapped position falls inside the moving grid and ``moving_mask`` count.  Same parameterisation and
    the same weak pull towards ``init``'s linear part as :func:`optimize_affine`.  A level with fewer
    than :data:`MI_MIN_VOXELS_PER_BIN` voxels per joint-histogram bin is skipped (all skipped: ``init``
    comes back unchanged).  ``rigid``: a rotation and a translation from ``init`` (:func:`_parameters`).
    ``average``: the answer is the mean of the parameters over that share of the last level's steps (Polyak
    averaging: on points drawn afresh each step, Adam's steps jitter about the optimum by about their size).
    """
    nd = fixed.dim()
    dev = fixed.device
    t0 = torch.as_tensor(np.asarray(init), dtype=torch.float64, device=dev).reshape(1, nd + 1, nd + 1)
    centre, half_extent = _frame(fixed_grid4, tuple(fixed.shape), dev)
    lin, trans, matrix = _parameters(t0, centre, half_extent, rigid)
    opt = Adam([lin, trans], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    tail: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last level's parameters to average
    for level, (factor, iters) in enumerate(levels):
        f_l = pool(fixed[None, None].float(), factor)
        m_l = pool(moving[None, None].float(), factor)
        shape = tuple(f_l.shape[2:])
        if math.prod(shape) < MI_MIN_VOXELS_PER_BIN * bins * bins:
            continue  # too few voxels for a bins x bins joint histogram: MI would follow its noise
        wf, wm_inv = _level_maps(fixed_grid4, moving_grid4, nd, factor, dev)
        weight = torch.ones(shape, device=dev)
        if fixed_mask is not None:
            weight = (pool(fixed_mask.to(dev).float()[None, None], factor)[0, 0] >= 0.5).float()
            if not bool((weight > 0).any()):
                continue
        lo, hi, strides = _sampling_box(weight)
        f_flat, w_flat = f_l.flatten(), weight.flatten()
        ones = torch.ones_like(m_l)
        mov_in = None
        if moving_mask is not None:
            mov_in = (pool(moving_mask.to(dev).float()[None, None], factor) >= 0.5).float()
        n = min(int(points), int(math.prod(shape)))
        t_start, g_start = opt.t, g.get_state()
        idx_all, pick_all = random_box_voxel_draws(lo, hi, strides, n, iters, g, torch.float64)
        # the loop stops at the first step with fewer than 100 counted points: on the device, a flag
        # that step clears for good, no step applied once it is clear (no read-back per step)
        alive = torch.ones((), dtype=torch.bool, device=dev)
        taken = torch.zeros((), dtype=torch.long, device=dev)
        for it in range(iters):
            opt.lr = lr * (1.0 - 0.9 * it / max(iters - 1, 1))
            idx, pick = idx_all[it], pick_all[it]
            opt.zero_grad()
            m = (wm_inv @ matrix() @ wf)[0]
            coords = apply_matrix(m, idx).float().view(1, nd, n, *([1] * (nd - 1)))
            values = sample(m_l, coords).flatten()
            inside = sample(ones, coords.detach()).flatten() > 0.99
            if mov_in is not None:
                inside = inside & (sample(mov_in, coords.detach()).flatten() >= 0.5)
            w = w_flat[pick] * inside.float()
            alive = alive & ~(w.sum() < 100)
            loss = -parzen_mutual_information(f_flat[pick], values, w, bins)
            loss = loss + _penalty(rigid) * (lin * lin).sum()
            loss.backward()
            opt.step(alive)
            taken += alive
            if average > 0 and level + 1 == len(levels) and it >= iters * (1.0 - average):
                tail.append((lin.detach().clone(), trans.detach().clone()))
        if level + 1 < len(levels):  # a later level goes on from this one's step count and draws
            _stopped_at(taken, iters, opt, t_start, g, g_start, (nd, n))
    if tail:  # a step the loop stopped (too few points) left the parameters as they were: averaged as such
        with torch.no_grad():
            lin.copy_(torch.stack([t[0] for t in tail]).mean(0))
            trans.copy_(torch.stack([t[1] for t in tail]).mean(0))
    return matrix().detach().cpu().numpy()[0]


def _stopped_at(taken: torch.Tensor, iters: int, opt: Adam, t_start: int, g: torch.Generator, g_start, draw) -> None:
    """Leave ``opt``'s step count and the generator ``g`` where a level's loop that stopped at its
    first dead step would have: ``taken`` steps (one scalar read per level) of ``iters``, and, if it
    stopped early, the points of one step more drawn (it drew them, then found too few inside).
    ``g_start``: ``g``'s state before the level's draws, each of shape ``draw``, float64."""
    steps = int(taken)
    opt.t = t_start + steps
    if steps < iters:
        g.set_state(g_start)
        torch.rand((steps + 1, *draw), generator=g, dtype=torch.float64)


def optimize_affine(
    fixed_feat: torch.Tensor,
    fixed_grid4: np.ndarray,
    moving_feat: torch.Tensor,
    moving_grid4: np.ndarray,
    init: np.ndarray,
    levels: tuple[tuple[int, int], ...] = ((4, 60), (2, 12)),
    lr: float = 0.02,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    rigid: bool = False,
) -> np.ndarray:
    """Refine ``init`` (fixed world -> moving world) by minimising feature MSE.

    ``init``: one ``(n+1, n+1)`` matrix, or ``(K, n+1, n+1)`` for K starts optimised side by side
    (one batched sampling per step instead of K; each start's loss, gradient and Adam update are its
    own, so each ends where it would alone); the result has the shape of ``init``.
    ``fixed_feat`` / ``moving_feat``: ``(1, C, *S)`` features on their own working grids whose 4x4
    voxel-to-world affines are ``fixed_grid4`` / ``moving_grid4``.  ``levels`` lists (pooling factor,
    iterations), coarse to fine.  The affine is parameterised about the fixed field-of-view centre,
    translation scaled by the field-of-view size so one learning rate fits every image size.
    ``fixed_mask`` / ``moving_mask``: optional boolean ``(*S)`` masks on the two feature grids; the
    feature MSE then counts only fixed voxels inside ``fixed_mask`` whose mapped position falls
    inside ``moving_mask`` (as ANTs/elastix masks do: the features themselves are not zeroed).
    ``pooled``: ``{factor: (fixed, moving)}`` features already pooled by ``factor`` (a caller running
    many starts pools once).  ``rigid``: each start moved by a rotation and a translation only
    (:func:`_parameters`): a rigid start stays rigid.
    """
    nd = fixed_feat.dim() - 2
    dev = fixed_feat.device
    t0 = torch.as_tensor(np.asarray(init), dtype=torch.float64, device=dev)
    single = t0.dim() == 2
    t0 = t0.reshape(-1, nd + 1, nd + 1)
    k = t0.shape[0]
    shape = fixed_feat.shape[2:]
    centre, half_extent = _frame(fixed_grid4, shape, dev)
    lin, trans, matrix = _parameters(t0, centre, half_extent, rigid)
    opt = Adam([lin, trans], lr=lr)

    for factor, iters in levels:
        ff, fm = (pooled or {}).get(factor) or (pool(fixed_feat, factor), pool(moving_feat, factor))
        wf_l, wm_l_inv = _level_maps(fixed_grid4, moving_grid4, nd, factor, dev)
        ident = identity_coords(ff.shape[2:], dev, torch.float64)
        # Count only voxels where the fixed features have structure: in flat background MIND is
        # constant, and a shrinking/shifting affine could otherwise "match" background to
        # background (seen on CT-like images, where it converged to 0.79 scaling).
        structure = structure_mask(ff)
        if fixed_mask is not None:
            fmask = (pool(fixed_mask.to(dev).float()[None, None], factor) >= 0.5).float()
            structure = torch.where((structure * fmask).sum() > 0, structure * fmask, fmask)  # no read-back
        fm_k = fm.expand(k, *fm.shape[1:])
        ones_k = torch.ones_like(fm_k[:, :1])
        mov_in = ones_k
        if moving_mask is not None:
            mov_in = (pool(moving_mask.to(dev).float()[None, None], factor) >= 0.5).to(fm.dtype).expand_as(ones_k)
        for _ in range(iters):
            opt.zero_grad()
            mats = wm_l_inv @ matrix() @ wf_l
            coords = torch.stack([apply_matrix(m, ident) for m in mats.unbind(0)]).float()
            warped = sample(fm_k, coords)
            inside = sample(ones_k, coords.detach()) > 0.99
            if moving_mask is not None:
                inside = inside & (sample(mov_in, coords.detach()) >= 0.5)
            # each start's own feature MSE, summed: the starts' gradients stay apart
            loss = feature_mse_each(ff, warped, inside.float() * structure).sum()
            # a weak pull towards the initialisation's linear part keeps near-rigid anatomy near-rigid
            loss = loss + _penalty(rigid) * (lin * lin).sum()
            loss.backward()
            opt.step()
    out = matrix().detach().cpu().numpy()
    return out[0] if single else out


def structure_mask(feat: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Voxels ``(B, 1, *S)`` where features vary across channels (structure, not flat background); all
    of them if under 1 % do (chosen on the device: no read-back)."""
    m = ((feat.amax(1, keepdim=True) - feat.amin(1, keepdim=True)) > threshold).float()
    return torch.where(m.mean() >= 0.01, m, torch.ones_like(m))


@torch.no_grad()
def affine_cost(
    fixed_feat: torch.Tensor,
    fixed_grid4: np.ndarray,
    moving_feat: torch.Tensor,
    moving_grid4: np.ndarray,
    matrix: np.ndarray,
    mask: torch.Tensor | None = None,
) -> tuple[float, float]:
    """``(cost, overlap)`` of ``matrix`` (fixed world -> moving world): the feature MSE over the fixed
    structure (or ``mask``) that maps inside the moving field of view -- what :func:`optimize_affine`
    minimises -- and the fraction of that structure which does (the do-no-harm yardsticks of the
    affine stage: an affine must lower the cost without pushing the object out of view)."""
    nd = fixed_feat.dim() - 2
    dev = fixed_feat.device
    maps = np.stack([affine_nd(fixed_grid4, nd), np.linalg.inv(affine_nd(moving_grid4, nd)), matrix])
    wf, wm_inv, m = torch.as_tensor(maps, dtype=torch.float64, device=dev)  # one copy (the search scores ~30)
    coords = apply_matrix(wm_inv @ m @ wf, identity_coords(fixed_feat.shape[2:], dev, torch.float64))
    coords = coords.unsqueeze(0).to(moving_feat.dtype)
    warped = sample(moving_feat, coords)
    inside = (sample(torch.ones_like(moving_feat[:, :1]), coords) > 0.99).float()
    weight = structure_mask(fixed_feat) if mask is None else mask
    overlap = (weight * inside).sum() / weight.sum().clamp_min(1.0)
    cost = feature_mse(fixed_feat, warped, mask=weight * inside)
    cost_f, overlap_f = torch.stack([cost.double(), overlap.double()]).tolist()  # one read-back
    return cost_f, overlap_f


# Rotation starts of the affine search (degrees, each with its sign), per dimension.  2-D: every 15
# degrees in the plane (slices, sections and photographs come at any angle).  Measured in-process on
# the held-out suite's 2-D affine family (20 pairs): starts at +-30, +-90 and 180 degrees, and starts
# every 30 degrees, both lose a cropped body pair rotated by -29 degrees (Dice 0.375, no registration
# 0.33); every 15 degrees finds it (0.97): family mean 0.910 -> 0.939 Dice, EPE 2.73 -> 1.13 mm, +0.2 s
# CPU per pair, the other 80 pairs of the suite unchanged.  3-D: +-30 degrees about each axis.
ROTATION_START_DEGREES = {2: tuple(float(a) for a in range(15, 180, 15)), 3: (30.0,)}
# 3-D: the same angles also about the four body diagonals and the six face diagonals of the axes (an
# object turned about an oblique axis lies > 11 mm from every single-axis start; see OBLIQUE_STARTS in
# stages.affine for what they changed).  () = the coordinate axes only.
OBLIQUE_AXES: tuple[tuple[float, float, float], ...] = (
    (1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1),
    (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1),
)  # fmt: skip


def _axis_rotation(axis, degrees: float) -> np.ndarray:
    """The 3x3 rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    a = math.radians(degrees)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * (kx @ kx)


def _moments(mask: torch.Tensor, affine4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (world mm) and covariance (world mm^2) of the voxels where ``mask`` ``(*S)`` is > 0."""
    nd = mask.dim()
    w = (mask > 0).double().flatten()
    coords = identity_coords(mask.shape, device=mask.device, dtype=torch.float64).flatten(1)  # (nd, N)
    a = torch.as_tensor(affine_nd(affine4, nd), dtype=torch.float64, device=mask.device)
    x = a[:nd, :nd] @ coords + a[:nd, nd:]
    total = w.sum().clamp_min(1.0)
    mean = (x * w).sum(1) / total
    d = (x - mean[:, None]) * w.sqrt()
    cov = d @ d.T / total
    both = torch.cat([mean[:, None], cov], 1).cpu().numpy()  # one read-back
    return both[:, 0], both[:, 1:]


def principal_axes_starts(fixed: torch.Tensor, fixed_affine4, moving: torch.Tensor, moving_affine4) -> list:
    """Starts that turn the fixed object's principal axes of inertia onto the moving object's, about the fixed
    centroid, and take that centroid onto the moving one (ITK's ``CenteredTransformInitializer`` in its
    MOMENTS mode): ``fixed`` / ``moving`` are foreground masks ``(*S)`` on their grids.  An axis is only known
    up to its sign, so every proper choice of signs is a start (4 in 3-D, 2 in 2-D): ``[matrix, ...]``.
    Objects turned far beyond the rotation starts (a head stored 90 or 180 degrees off, a specimen on its
    side) get a start within the axes' own uncertainty of the answer.  [] when an object is empty."""
    nd = fixed.dim()
    if not (bool((fixed > 0).any()) and bool((moving > 0).any())):
        return []
    cf, sf = _moments(fixed, fixed_affine4)
    cm, sm = _moments(moving, moving_affine4)
    _, vf = np.linalg.eigh(sf)  # columns: the axes, by increasing variance
    _, vm = np.linalg.eigh(sm)
    out = []
    for signs in np.ndindex(*([2] * (nd - 1))):
        d = np.array([1.0 - 2.0 * b for b in signs] + [1.0])
        rot = vm @ np.diag(d) @ vf.T
        if np.linalg.det(rot) < 0:  # a reflection: flip the last axis instead
            d[-1] = -1.0
            rot = vm @ np.diag(d) @ vf.T
        m = np.eye(nd + 1)
        m[:nd, :nd] = rot
        m[:nd, nd] = cm - rot @ cf
        out.append(m)
    return out


def rotation_starts(
    centre: np.ndarray, nd: int, base: np.ndarray, degrees=None, oblique: bool = False
) -> list[np.ndarray]:
    """``base`` composed with rotations about ``centre`` (fixed world): +-each angle (default
    :data:`ROTATION_START_DEGREES`) about each axis (3-D) or in-plane (2-D, plus 90 and 180 degrees),
    for large initial misalignments; ``oblique`` (3-D): about :data:`OBLIQUE_AXES` too."""
    degrees = ROTATION_START_DEGREES[nd] if degrees is None else degrees
    planes = [(0, 1)] if nd == 2 else [(0, 1), (0, 2), (1, 2)]
    signed = {a for d in degrees for a in (d, -d)}
    angles = sorted(signed | ({90.0, -90.0, 180.0} if nd == 2 else set()))
    turns = []  # the linear parts, in order: each plane's angles, then each oblique axis's
    for i, j in planes:
        for a in angles:
            r = np.eye(nd)
            c, s_ = np.cos(np.radians(a)), np.sin(np.radians(a))
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -s_, s_, c
            turns.append(r)
    if nd == 3 and oblique:
        turns += [_axis_rotation(axis, a) for axis in OBLIQUE_AXES for a in sorted(signed)]
    shift = np.eye(nd + 1)
    shift[:nd, nd] = centre
    back = np.eye(nd + 1)
    back[:nd, nd] = -centre
    out = []
    for turn in turns:
        r = np.eye(nd + 1)
        r[:nd, :nd] = turn
        out.append(base @ shift @ r @ back)
    return out
