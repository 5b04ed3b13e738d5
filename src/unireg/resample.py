"""One pass over the fixed grid that produces every fixed-grid output.

For each slab of fixed voxels: world points ``x`` -> working voxels ``p`` -> sample the working-grid
displacement and Jacobian at ``p`` -> moving world points ``y = T W (p + d)`` -> sample the original
moving image and its one-hot labels at ``y``.  Coordinates are computed once per voxel and the
moving image is interpolated once (no double interpolation), with memory bounded by the slab size.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UniRegError
from .io.image import Image, same_grid
from .spatial.frames import grids_match, world_coverage
from .spatial.grid import apply_matrix, sample
from .spatial.world import affine_nd, pull, slab_size, slab_voxels, slabs, source_voxels

__all__ = [
    "resample_fixed_grid",
    "warp_labels",
    "labelwise_vote",
    "labelwise_argmax",
    "nearest_labels",
    "check_in_view",
    "onto_grid",
]

# Label maps are interpolated label-wise at any number of labels (linear per label, then the label with
# the most weight; ANTs' GenericLabel), one routine for every command (register, apply, batch, evaluate):
# they must give the same label map for the same transform.  Points where no grid corner of the map lies
# inside it get 0 (background), as ANTs' and ITK's interpolators give outside an image.  (Before session 31
# maps with more than 64 labels were resampled nearest-neighbour, to bound the one-hot maps' memory, and
# through float32, which rounds label values beyond 2**24: an Allen mouse atlas's 614454277 came out as
# 614454272.  The vote below made the bound needless.)
# From this many labels on, the label-wise interpolation votes among each point's grid corners
# (:func:`labelwise_vote`: time and memory flat in the number of labels) instead of interpolating one
# one-hot map per label (one sampling pass for all, its cost growing with the labels).  The same label
# maps either way, but where labels tie exactly (a point halfway between two: there the one-hot sums'
# float rounding decides, the vote takes the smallest label; tests/test_resample.py) and at points
# within ~1e-7 voxel of one voxel beyond the map's edge (grid_sample's normalised coordinates round
# otherwise).  `python benchmarks/label_resampling.py` (a 256^3 map onto a 1 mm head, 2 threads,
# benchmarks/results/label_resampling.md): 4 labels 1.3 s one-hot, 3.2 s vote; 12 labels 2.5 s / 2.2 GB
# one-hot, 3.5 s / 1.2 GB vote; 45 (a FreeSurfer aseg) 13.8 s / 6.9 GB one-hot, 3.2 s / 1.2 GB vote.
VOTE_MIN_LABELS = 12


def labelwise_argmax(probs: torch.Tensor) -> torch.Tensor:
    """Index of the largest of ``probs`` ``(L, *S)`` per voxel, first wins ties (a running maximum:
    argmax over a strided dimension is slow); -1 where every one is zero (no corner of the map's grid
    around the point: outside it)."""
    best, idx = probs[0], torch.zeros(probs.shape[1:], dtype=torch.int64, device=probs.device)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        best = torch.where(better, probs[k], best)
        idx = idx.masked_fill(better, k)
    return idx.masked_fill(best <= 0, -1)


def _label_values(values: np.ndarray, index: torch.Tensor, dtype) -> np.ndarray:
    """Indices into the sorted label ``values`` as the labels themselves (``dtype``); -1 (outside) as 0."""
    idx = index.cpu().numpy()
    return np.where(idx < 0, 0, values[np.maximum(idx, 0)]).astype(dtype, copy=False)


def labelwise_vote(index_map: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Label-wise linear interpolation of a label map at voxel coordinates ``coords`` ``(nd, *P)``: at each
    point, the index (into the sorted label values, ``index_map`` ``(*S)`` int64) whose label carries the
    largest total linear weight among the point's ``2**nd`` grid corners; corners outside the grid weigh
    nothing; exact ties: the smallest index; points with no corner inside: -1.  The winner of interpolating
    every label's one-hot map linearly (zero outside) and taking :func:`labelwise_argmax` (which, at exact
    ties, follows its sums' float rounding), but from the corners alone: memory and time do not grow with
    the number of labels (:data:`VOTE_MIN_LABELS`)."""
    nd, pts = coords.shape[0], coords.shape[1:]
    c = coords.reshape(nd, -1)
    base = torch.floor(c)
    frac = c - base
    base = base.long()
    sizes = index_map.shape
    flat_map = index_map.reshape(-1)
    labels, weights = [], []
    for corner in range(2**nd):
        offs = [(corner >> (nd - 1 - a)) & 1 for a in range(nd)]
        w = torch.ones_like(frac[0])
        flat = torch.zeros_like(base[0])
        inside = torch.ones_like(frac[0], dtype=torch.bool)
        for a, o in enumerate(offs):
            i = base[a] + o
            inside &= (i >= 0) & (i < sizes[a])
            w = w * (frac[a] if o else 1.0 - frac[a])
            flat = flat * sizes[a] + i.clamp(0, sizes[a] - 1)
        labels.append(flat_map[flat])
        weights.append(torch.where(inside, w, torch.zeros_like(w)))
    lab, wts = torch.stack(labels), torch.stack(weights)
    # most points have one label at every corner: theirs, if any corner is inside; the vote for the rest
    uniform = (lab == lab[:1]).all(0)
    out = torch.where(uniform & (wts.sum(0) > 0), lab[0], torch.full_like(lab[0], -1))
    mixed = (~uniform).nonzero().squeeze(1)
    lab, wts = lab[:, mixed], wts[:, mixed]
    best = torch.full_like(lab[0], -1)
    best_score = torch.zeros_like(wts[0])
    for k in range(lab.shape[0]):
        score = (wts * (lab == lab[k])).sum(0)
        better = (score > best_score) | ((score == best_score) & (score > 0) & (lab[k] < best))
        best = torch.where(better, lab[k], best)
        best_score = torch.where(better, score, best_score)
    out[mixed] = best
    return out.reshape(pts)


def _one_hot(labels: np.ndarray, values: np.ndarray, device) -> torch.Tensor:
    """``(len(values), *S)`` float32 on ``device``: 1 where the map holds each of ``values``."""
    lab_t = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    return torch.stack([(lab_t == int(v)).float() for v in values])


def _index_map(labels: np.ndarray, values: np.ndarray, device) -> torch.Tensor:
    """Each voxel's index into ``values`` (the map's sorted label values), int64 on ``device``."""
    return torch.from_numpy(np.searchsorted(values, labels).astype(np.int64)).to(device)


def warp_labels(labels: np.ndarray, src_affine4, out_shape, out_affine4, world_map, device="cpu") -> np.ndarray:
    """Resample an integer label map through ``world_map`` (see :func:`unireg.spatial.world.pull`),
    label-wise (linear per label, the label with the most weight wins; below :data:`VOTE_MIN_LABELS`
    labels through one-hot maps, from it on by :func:`labelwise_vote`); 0 beyond the map; the
    interpolation runs on ``device``; the result comes back as a numpy array."""
    values = np.unique(labels)
    if len(values) < VOTE_MIN_LABELS:  # one one-hot map per label, interpolated linearly
        probs = pull(_one_hot(labels, values, device), src_affine4, out_shape, out_affine4, world_map=world_map)
        return _label_values(values, labelwise_argmax(probs), labels.dtype)
    index = _index_map(labels, values, device)
    result = np.empty(tuple(out_shape), labels.dtype)
    chunk = slab_size(index.device, 24, 1_000_000)
    for rows, vox in source_voxels(src_affine4, out_shape, out_affine4, world_map, chunk, index.device):
        result[rows] = _label_values(values, labelwise_vote(index, vox), labels.dtype)
    return result


def nearest_labels(labels: np.ndarray, src_affine4, out_shape, out_affine4, world_map, device="cpu") -> np.ndarray:
    """Nearest-neighbour resampling of an integer map (``apply -n nearest`` of a label map) with its values
    exact whatever their size: the nearest voxel's index into the sorted values is what is interpolated
    (float32 holds every index up to 2**24 exactly, not every label value: an Allen atlas's 614454277
    would round to 614454272); 0 beyond the map, as with linear interpolation."""
    values = np.unique(labels)
    index = (_index_map(labels, values, device) + 1).float()[None]  # 0: beyond the map (zero padding)
    out = pull(index, src_affine4, out_shape, out_affine4, world_map=world_map, mode="nearest")
    return _label_values(values, out[0].round().long() - 1, labels.dtype)


def resample_fixed_grid(
    fixed_shape,
    fixed_affine4: np.ndarray,
    work_affine4: np.ndarray,
    affine_matrix: np.ndarray,
    disp_w: torch.Tensor,
    jac_w: torch.Tensor,
    moving: np.ndarray,
    moving_affine4: np.ndarray,
    labels: np.ndarray | None = None,
    chunk_voxels: int | None = None,
    labels_affine4: np.ndarray | None = None,
) -> dict:
    """Warp field (RAS mm), warped image, Jacobian and warped labels on the fixed grid.

    Parameters
    ----------
    disp_w : ``(1, n, *S_w)`` displacement in working voxels.  ``jac_w``: ``(*S_w)``.
    moving : ``(C, *S_m)`` image.  ``labels``: integer label map or None, on the moving grid or, with
    ``labels_affine4`` (its 4x4 voxel-to-world matrix), on a grid of its own: then it is sampled at the
    same moving world points from its own voxels (as ANTs and ITK resample a label map in world space).
    affine_matrix : ``(n+1)``-square fixed-world -> moving-world matrix.

    Returns
    -------
    dict with ``warp_mm`` ``(n, *S_f)`` float32, ``warped`` ``(C, *S_f)`` float32, ``jacobian``
    ``(*S_f)`` float32 and ``labels`` ``(*S_f)`` (input dtype) or None.

    The work runs on ``disp_w``'s device, slab by slab (the moving image and its one-hot labels are
    copied there once); each slab's results come back to the host arrays returned.  ``chunk_voxels``:
    voxels per slab (default: :func:`unireg.spatial.world.slab_size`, 1 M on a CPU; a 1 mm head with a
    few labels is one slab on a GPU).
    """
    nd = len(fixed_shape)
    f32 = torch.float32
    dev = disp_w.device
    f_aff = torch.as_tensor(affine_nd(fixed_affine4, nd), dtype=f32, device=dev)
    w_aff = torch.as_tensor(affine_nd(work_affine4, nd), dtype=f32, device=dev)
    w_inv = torch.linalg.inv(w_aff)
    t_mat = torch.as_tensor(affine_matrix, dtype=f32, device=dev)
    m_inv = torch.as_tensor(np.linalg.inv(affine_nd(moving_affine4, nd)), dtype=f32, device=dev)
    # fixed voxel -> working voxel is affine: fold it into one matrix
    f_to_w = w_inv @ f_aff
    work_fields = torch.cat([disp_w[0].to(f32), jac_w[None].to(device=dev, dtype=f32)], 0)[None]

    src = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32)).to(dev)
    n_img = src.shape[0]
    values = index = onehot = None
    lab_inv = m_inv  # moving world -> the label map's voxels (its own grid, or the moving image's)
    if labels is not None:
        if labels_affine4 is not None and not grids_match(labels.shape, labels_affine4, moving.shape[1:],
                                                          moving_affine4):
            lab_inv = torch.as_tensor(np.linalg.inv(affine_nd(labels_affine4, nd)), dtype=f32, device=dev)
        values = np.unique(labels)
        if len(values) < VOTE_MIN_LABELS:  # one-hot maps: with the image in one sampling on its grid
            onehot = _one_hot(labels, values, dev)
            if lab_inv is m_inv:
                src, onehot = torch.cat([src, onehot], 0), None
            else:
                onehot = onehot[None]
        else:
            index = _index_map(labels, values, dev)
    src = src[None]
    if chunk_voxels is None:  # ~12 floats per voxel besides the sampled channels (+ the label corners)
        extra = 0 if labels is None else (onehot.shape[1] if onehot is not None else 2 * 2**nd)
        chunk_voxels = slab_size(dev, src.shape[1] + 12 + extra, 1_000_000)

    warp_mm = np.empty((nd,) + tuple(fixed_shape), np.float32)
    warped = np.empty((n_img,) + tuple(fixed_shape), np.float32)
    jac = np.empty(tuple(fixed_shape), np.float32)
    out_labels = None if labels is None else np.empty(tuple(fixed_shape), labels.dtype)
    for rows in slabs(fixed_shape, chunk_voxels):
        start, stop = rows.start, rows.stop
        ivox = slab_voxels(fixed_shape, rows, f32, dev)
        x = apply_matrix(f_aff, ivox)
        p = apply_matrix(f_to_w, ivox)
        fw = sample(work_fields, p[None], padding_mode="border")[0]
        y = apply_matrix(t_mat, apply_matrix(w_aff, p + fw[:nd]))
        # straight into the host arrays (one copy each: no intermediate host tensor)
        torch.from_numpy(warp_mm)[:, start:stop].copy_(y - x)
        torch.from_numpy(jac)[start:stop].copy_(fw[nd])
        q = apply_matrix(m_inv, y)[None]
        vals = sample(src, q)[0]
        torch.from_numpy(warped)[:, start:stop].copy_(vals[:n_img])
        if out_labels is not None and values is not None:
            q_lab = q[0] if lab_inv is m_inv else apply_matrix(lab_inv, y)  # in the label map's own voxels
            if index is not None:
                out_labels[start:stop] = _label_values(values, labelwise_vote(index, q_lab), out_labels.dtype)
            else:  # one-hot maps
                probs = vals[n_img:] if onehot is None else sample(onehot, q_lab[None])[0]
                out_labels[start:stop] = _label_values(values, labelwise_argmax(probs), out_labels.dtype)
    return {"warp_mm": warp_mm, "warped": warped, "jacobian": jac, "labels": out_labels}


# A label map or mask on a grid of its own must meet its image in world space: below this share of its
# nonzero voxels inside the image's field of view, and of the image's field of view inside its grid, the
# two are taken to be apart (a header with another origin or orientation) and refused.
MIN_COVERAGE = 0.01


def check_in_view(img: Image, ref: Image, what: str, ref_name: str) -> None:
    """Raise :class:`UniRegError` (naming ``img``'s file) unless ``img`` (a label map or mask) has
    ``ref``'s dimensionality and, on a grid of its own, meets ``ref`` in world space (:data:`MIN_COVERAGE`).
    On another grid it is resampled in world space by its own voxel-to-world matrix, as ANTs and ITK do
    (:func:`onto_grid`, or ``resample_fixed_grid(labels_affine4=)`` for the moving labels)."""
    if img.ndim != ref.ndim:
        raise UniRegError(f"{what} is {img.ndim}-D but the {ref_name} is {ref.ndim}-D", img.path)
    if same_grid(img, ref) or not np.any(img.data[0]):
        return
    ours = world_coverage(img.data[0], img.affine, ref.spatial_shape, ref.affine)
    if ours < MIN_COVERAGE and (
        world_coverage(np.ones(ref.spatial_shape, bool), ref.affine, img.spatial_shape, img.affine) < MIN_COVERAGE
    ):
        raise UniRegError(
            f"{what} ({'x'.join(map(str, img.spatial_shape))} voxels, on a grid of its own) does not meet the "
            f"{ref_name} in world space ({100 * ours:.0f} % of its nonzero voxels inside it): check its header "
            "(origin, orientation)",
            img.path,
        )


def onto_grid(img: Image, ref: Image, what: str, ref_name: str) -> Image:
    """``img`` (a label map or mask) on ``ref``'s grid: itself if already there, else resampled in world
    space label-wise (:func:`warp_labels`), once :func:`check_in_view` has found it meets ``ref``."""
    check_in_view(img, ref, what, ref_name)
    if same_grid(img, ref):
        return img
    data = warp_labels(img.data[0], img.affine, ref.spatial_shape, ref.affine, None)
    return Image(data[None], np.asarray(ref.affine, dtype=np.float64).copy(), img.path, dict(img.meta))
