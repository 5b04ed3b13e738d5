"""World-coordinate resampling: working grids, chunked pulls (affine helpers live in :mod:`.frames`).

A point mapping between two images is always expressed in world millimetres (RAS) and turned
into voxel-to-voxel matrices here, so the pipeline never mixes voxel spaces by accident.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .frames import affine_nd, apply_homogeneous, embed_nd, world_to_voxel
from .grid import apply_matrix, sample

__all__ = [
    "affine_nd",
    "embed_nd",
    "working_grid",
    "cropped_grid",
    "pull",
    "source_voxels",
    "apply_homogeneous",
    "slabs",
    "slab_voxels",
    "fill_by_slabs",
    "pooled_affine",
    "field_on_grid",
    "warp_points",
]


def pooled_affine(affine4: np.ndarray, ndim: int, factor: int) -> np.ndarray:
    """4x4 voxel-to-world affine of a grid average-pooled by ``factor`` (kernel = stride = factor):
    pooled voxel ``q`` is the centre of original voxels ``factor*q ... factor*q + factor-1``."""
    sub = np.diag([float(factor)] * ndim + [1.0])
    sub[:ndim, ndim] = (factor - 1) / 2.0
    return embed_nd(affine_nd(affine4, ndim) @ sub, ndim)


def slabs(shape: Sequence[int], chunk_voxels: int):
    """Slices of the first axis of ``shape`` holding about ``chunk_voxels`` voxels each."""
    step = max(1, chunk_voxels // max(int(np.prod(shape[1:])), 1))
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def fill_by_slabs(
    shape: Sequence[int],
    channels: int,
    per_slab: Callable[[torch.Tensor], torch.Tensor],
    chunk_voxels: int,
    device=None,
) -> np.ndarray:
    """A host array ``(channels, *shape)`` float32 filled slab by slab along the first axis:
    ``per_slab(v)`` gets one slab's voxel coordinates ``(n, rows, *shape[1:])`` (:func:`slab_voxels`,
    on ``device``) and returns its ``(channels, rows, *shape[1:])`` values, copied straight into the
    array (memory stays bounded by the slab, whatever the grid)."""
    out = np.empty((channels,) + tuple(shape), dtype=np.float32)
    for rows in slabs(shape, chunk_voxels):
        torch.from_numpy(out)[:, rows].copy_(per_slab(slab_voxels(shape, rows, device=device)))
    return out


GPU_SLAB_FLOATS = 400_000_000  # float32 temporaries per slab of a whole-grid pass on a GPU (1.6 GB)


def slab_size(device, floats_per_voxel: int, cpu_voxels: int) -> int:
    """Voxels per slab of a whole-grid pass: ``cpu_voxels`` on a CPU (slabs that stay in the cache); on
    a GPU, where each slab costs synchronising copies back, as many as keep ``floats_per_voxel`` float32
    temporaries per voxel within :data:`GPU_SLAB_FLOATS` (a 1 mm head is one slab)."""
    if torch.device(device or "cpu").type == "cpu":
        return int(cpu_voxels)
    return max(int(cpu_voxels), GPU_SLAB_FLOATS // max(int(floats_per_voxel), 1))


def slab_voxels(shape: Sequence[int], rows: slice, dtype=torch.float32, device=None) -> torch.Tensor:
    """Voxel coordinates ``(n, rows, *shape[1:])`` of one slab of a grid (array-axis order)."""
    axes = [torch.arange(rows.start, rows.stop, dtype=dtype, device=device)] + [
        torch.arange(n, dtype=dtype, device=device) for n in shape[1:]
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)


# Voxel counts within this many voxels of an integer count as that integer.  Images written by
# different tools (NIfTI vs MetaImage, float32 vs float64 headers) carry affines that differ by
# ~1e-6..1e-4 mm; when an extent is an exact multiple of the spacing (MNI at 2 mm), a floor with a
# 1e-6 tolerance dropped an axis by one voxel for one twin and recentred its grid (warps 0.56 mm apart).
GRID_SNAP_VOX = 1e-3


def _steps(n: float) -> int:
    """``floor(n)``, except that values within :data:`GRID_SNAP_VOX` of an integer snap to it."""
    r = round(n)
    return int(r) if abs(n - r) < GRID_SNAP_VOX else int(np.floor(n))


def working_grid(
    shape: Sequence[int], affine4: np.ndarray, spacing: float, max_size: int | None = None
) -> tuple[tuple[int, ...], np.ndarray]:
    """A world-axis-aligned grid with isotropic ``spacing`` (mm) covering an image's field of view.

    Returns ``(shape, affine4)``.  The grid's axes follow world (RAS) axes, so oblique or flipped
    inputs all reach the network in one canonical orientation.  ``max_size`` caps the largest
    dimension by coarsening the spacing.
    """
    nd = len(shape)
    a = affine_nd(affine4, nd)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(nd, -1).T
    world = apply_homogeneous(a, corners.astype(np.float64))
    lo, hi = world.min(0), world.max(0)
    extent = hi - lo
    if max_size is not None:
        spacing = max(spacing, float(extent.max()) / max(max_size - 1, 1))
    out_shape = tuple(_steps(e / spacing) + 1 for e in extent)
    # centre the grid on the field of view
    used = (np.array(out_shape) - 1) * spacing
    origin = lo + (extent - used) / 2.0
    m = np.eye(nd + 1)
    m[:nd, :nd] = np.eye(nd) * spacing
    m[:nd, nd] = origin
    return out_shape, embed_nd(m, nd)


def cropped_grid(affine4: np.ndarray, box: Sequence[slice]) -> tuple[tuple[int, ...], np.ndarray]:
    """The part ``box`` (one slice per axis, step 1) of a grid: its shape and its voxel -> world matrix
    (the same voxel centres, the origin moved to the box's first voxel)."""
    nd = len(box)
    start = np.array([b.start for b in box], np.float64)
    out = np.array(affine4, np.float64).copy()
    out[:3, 3] = out[:3, 3] + out[:3, :nd] @ start
    return tuple(int(b.stop - b.start) for b in box), out


def pull(
    image: torch.Tensor,
    src_affine4: np.ndarray,
    out_shape: Sequence[int],
    out_affine4: np.ndarray,
    world_map: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    chunk_voxels: int = 2_000_000,
) -> torch.Tensor:
    """Resample ``image`` ``(C, *in)`` (on ``src_affine4``) onto the grid ``(out_shape, out_affine4)``.

    ``world_map(points_world, rows)`` optionally maps output world points ``(ndim, *chunk)`` (RAS mm)
    to source world points; ``rows`` is the slice of the first output axis in the chunk.  Work is done
    in slabs along the first output axis so memory stays bounded for large volumes.  Runs on
    ``image``'s device (the result too).
    """
    nd = len(out_shape)
    dev = image.device
    if (
        world_map is None
        and tuple(image.shape[1:]) == tuple(out_shape)
        and np.allclose(affine_nd(src_affine4, nd), affine_nd(out_affine4, nd), atol=1e-6)
    ):
        return image.clone()  # same grid, no mapping: nothing to interpolate
    result = torch.empty((image.shape[0],) + tuple(out_shape), dtype=image.dtype, device=dev)
    img = image.unsqueeze(0)
    img_f = img if img.is_floating_point() else img.float()
    for rows, vox in source_voxels(src_affine4, out_shape, out_affine4, world_map, chunk_voxels, dev):
        vals = sample(img_f, vox.unsqueeze(0).to(img_f.dtype), mode=mode, padding_mode=padding_mode)[0]
        result[(slice(None), rows)] = vals.to(result.dtype)
    return result


def source_voxels(
    src_affine4: np.ndarray,
    out_shape: Sequence[int],
    out_affine4: np.ndarray,
    world_map: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
    chunk_voxels: int = 2_000_000,
    device=None,
):
    """For each slab of the grid ``(out_shape, out_affine4)`` (about ``chunk_voxels`` voxels, along its first
    axis): ``(rows, coordinates)``, the slab's rows and where its voxels fall in the source grid's voxels,
    ``(ndim, rows, *out_shape[1:])`` float32 on ``device``, through ``world_map`` as for :func:`pull`."""
    nd = len(out_shape)
    dtype = torch.float32  # world mm in float32: ~1e-5 mm resolution, far below a voxel
    src = torch.as_tensor(np.linalg.inv(affine_nd(src_affine4, nd)), dtype=dtype, device=device)
    out = torch.as_tensor(affine_nd(out_affine4, nd), dtype=dtype, device=device)
    for rows in slabs(out_shape, chunk_voxels):
        world = apply_matrix(out, slab_voxels(out_shape, rows, dtype, device))
        if world_map is not None:
            world = world_map(world, rows)
        yield rows, apply_matrix(src, world)


def subdivided_grid(shape: Sequence[int], affine4: np.ndarray, factor: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid with the same corners as ``(shape, affine4)`` and ``factor`` times finer spacing.

    Voxel ``i`` of the fine grid sits at voxel ``i / factor`` of the coarse one, so a field in coarse
    voxels is read on the fine grid by sampling at ``i / factor`` and multiplying by ``factor``.
    """
    nd = len(shape)
    k = int(factor)
    sub = np.eye(nd + 1)
    sub[:nd, :nd] /= k
    return tuple((int(n) - 1) * k + 1 for n in shape), embed_nd(affine_nd(affine4, nd) @ sub, nd)


def native_factor(
    native_spacing: Sequence[float], working_spacing: float, shape: Sequence[int], budget_voxels: int
) -> int:
    """How many times the working grid must be subdivided to reach the finest native spacing, capped so
    that the fine grid holds at most ``budget_voxels`` voxels (1 = no finer grid)."""
    k = max(1, int(round(working_spacing / max(min(float(s) for s in native_spacing), 1e-6))))
    while k > 1 and np.prod([(int(n) - 1) * k + 1 for n in shape]) > budget_voxels:
        k -= 1
    return k


def field_on_grid(
    disp_mm: np.ndarray, field_affine4: np.ndarray, out_shape: Sequence[int], out_affine4: np.ndarray
) -> torch.Tensor:
    """A world-space displacement ``(ndim, *S)`` (RAS mm) carried onto another grid: linear
    interpolation, border values outside; returned as a float32 tensor ``(ndim, *out_shape)``
    (the input itself, as a tensor, when the grids are the same)."""
    t = torch.from_numpy(np.ascontiguousarray(disp_mm, dtype=np.float32))
    nd = len(out_shape)
    if tuple(t.shape[1:]) == tuple(out_shape) and np.allclose(
        affine_nd(field_affine4, nd), affine_nd(out_affine4, nd), atol=1e-4
    ):
        return t
    return pull(t, field_affine4, tuple(out_shape), out_affine4, padding_mode="border")


def warp_points(
    disp_mm: np.ndarray, field_affine4: np.ndarray, points_world: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Map world points ``(N, ndim)`` (RAS mm) through ``x -> x + u(x)``, ``u`` a world-space field
    ``(ndim, *S)`` on the grid of ``field_affine4`` (linear interpolation, border values outside;
    interpolated on ``device``, float64 where the device has it)."""
    pts = np.asarray(points_world, dtype=np.float64)
    nd = disp_mm.shape[0]
    if pts.ndim != 2 or pts.shape[1] != nd:
        raise ValueError(f"points must be (N, {nd}) for a {nd}-D warp, got {pts.shape}")
    vox = world_to_voxel(pts, field_affine4)
    dev = torch.device(device)
    dtype = torch.float32 if dev.type == "mps" else torch.float64
    coords = torch.as_tensor(vox.T.copy(), dtype=dtype, device=dev).view(1, nd, len(pts), *([1] * (nd - 1)))
    field = torch.as_tensor(np.ascontiguousarray(disp_mm), dtype=dtype, device=dev)[None]
    u = sample(field, coords, padding_mode="border")
    return pts + u[0].reshape(nd, len(pts)).T.double().cpu().numpy()
