"""The one place where UniReg's field conventions meet ``torch.nn.functional.grid_sample``.

Conventions (see docs/conventions.md):

* an image batch is ``(B, C, *spatial)``; a displacement ``disp_vox`` is ``(B, ndim, *spatial)``
  with components in **array-axis order** and values in **voxels of the grid it lives on**;
* ``grid_sample`` wants normalized coordinates with the last axis in (x, y[, z]) order, i.e. the
  reverse of array order, and we always use ``align_corners=True`` so that voxel ``0`` maps to -1
  and voxel ``N-1`` to +1 exactly.  The flip and that choice happen here and nowhere else.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F

__all__ = [
    "replicate_shift_parts",
    "with_caller_threads",
    "channels_last",
    "random_box_voxels",
    "random_box_voxel_draws",
    "identity_coords",
    "coords_vox_to_norm",
    "sample",
    "warp",
    "resize_field",
    "linear_resize",
    "affine_coords",
    "apply_matrix",
    "spatial_dims",
    "exp_velocity",
]


def spatial_dims(x: torch.Tensor) -> int:
    """Number of spatial dimensions of a ``(B, C, *spatial)`` tensor (2 or 3)."""
    nd = x.dim() - 2
    if nd not in (2, 3):
        raise ValueError(f"expected a (B, C, H, W) or (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    return nd


def identity_coords(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every grid point, ``(ndim, *shape)`` in array-axis order."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def coords_vox_to_norm(coords_vox: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """``(B, ndim, *out)`` voxel coordinates into an ``in_shape`` grid -> ``(B, *out, ndim)`` grid_sample grid.

    The last axis of the result is in (x, y[, z]) order, i.e. array order reversed.
    """
    nd = coords_vox.shape[1]
    scale = _vox_to_norm(tuple(int(n) for n in in_shape), coords_vox.device, coords_vox.dtype)
    coords_norm = coords_vox * scale.view(1, nd, *([1] * nd)) - 1.0
    return coords_norm.movedim(1, -1).flip(-1)


@functools.lru_cache(maxsize=256)
def _vox_to_norm(in_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``2 / (n - 1)`` per axis of ``in_shape``, ``(ndim,)``, kept once per grid: built afresh it is a
    host-to-device copy per :func:`sample` call, and on a GPU a blocking copy waits for the queue to
    drain (the affine loops sample a few times per step).  Built outside any inference mode, so that
    autograd may save it; nobody writes into it."""
    with torch.inference_mode(False):
        return torch.tensor([2.0 / max(n - 1, 1) for n in in_shape], device=device, dtype=dtype)


def sample(
    image: torch.Tensor,
    coords_vox: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``image`` ``(B, C, *in)`` at voxel coordinates ``coords_vox`` ``(B, ndim, *out)``.

    ``mode`` is ``"bilinear"`` (linear/trilinear) or ``"nearest"``.  Returns ``(B, C, *out)``.
    """
    grid = coords_vox_to_norm(coords_vox.to(image.dtype), image.shape[2:])
    return _grid_sample(image, grid, mode, padding_mode)


def _grid_sample(image: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``F.grid_sample(..., align_corners=True)``, on several CPU threads where that pays (3-D)."""
    parts = _parts(image, grid)
    if parts > 1:
        return _ThreadedSample3d.apply(image, grid, _MODES[mode], _PADDINGS[padding_mode], parts)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


# --------------------------------------------------------------------- 3-D sampling on several CPU cores
# ATen's 3-D grid_sample on the CPU parallelises over the batch only: a registration samples one
# image (batch 1) at a million points on one core whatever ``torch.set_num_threads`` says.  Here the
# points are split into one chunk per thread and sampled by worker threads (ATen releases the GIL).
# Every output value (and every gradient w.r.t. a point) depends on its own point only, so those are
# bitwise one call's; a gradient w.r.t. the image (the velocity's squarings) is the sum of the chunks'
# (equal up to float rounding).  2 threads, one squaring of a 4 mm whole-head velocity: forward 9.6 ->
# 6.5 ms, backward 30.8 -> 23.7 ms; 40k points of 12 feature maps at 1 mm: 163 -> 90 ms.
THREADED_MIN_POINTS = 32_768
T = TypeVar("T")
_MODES = {"bilinear": 0, "nearest": 1}
_PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}
_POOL: ThreadPoolExecutor | None = None


def with_caller_threads(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` wrapped to run in another thread with the calling thread's torch thread count at the
    time of wrapping: a pool's thread keeps the count it started with (OpenMP's is per thread), and
    the pipeline's workers outlive a call that changes it (``--threads``, a batch, the tests)."""
    threads = torch.get_num_threads()

    def run() -> T:
        torch.set_num_threads(threads)
        return fn()

    return run


def _parts(image: torch.Tensor, grid: torch.Tensor) -> int:
    """How many chunks to sample ``grid`` in (1: one ATen call)."""
    if image.device.type != "cpu" or image.dim() != 5 or image.shape[0] != 1 or grid.shape[0] != 1:
        return 1
    k = min(torch.get_num_threads(), 8, grid.shape[1])
    if k < 2 or grid.shape[1] * grid.shape[2] * grid.shape[3] < THREADED_MIN_POINTS:
        return 1
    return k


def _pool(k: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < k:
        _POOL = ThreadPoolExecutor(max_workers=k, thread_name_prefix="unireg-sample")
    return _POOL


class _ThreadedSample3d(torch.autograd.Function):
    """``grid_sample(image, grid, align_corners=True)`` (3-D, batch 1), the grid's first spatial axis
    cut into ``parts`` chunks sampled by worker threads."""

    @staticmethod
    def forward(ctx, image, grid, mode: int, padding: int, parts: int):  # type: ignore[override]
        chunks = grid.chunk(parts, dim=1)
        outs = list(_pool(parts).map(lambda g: torch.grid_sampler(image, g, mode, padding, True), chunks))
        ctx.save_for_backward(image, grid)
        ctx.mode, ctx.padding, ctx.parts = mode, padding, parts
        return torch.cat(outs, dim=2)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        image, grid = ctx.saved_tensors
        chunks = grid.chunk(ctx.parts, dim=1)
        grads = grad_out.split([c.shape[1] for c in chunks], dim=2)

        need_image = bool(ctx.needs_input_grad[0])

        def one(args):
            g, go = args
            return torch.ops.aten.grid_sampler_3d_backward(
                go.contiguous(), image, g, ctx.mode, ctx.padding, True, [need_image, True]
            )

        res = list(_pool(ctx.parts).map(one, zip(chunks, grads, strict=True)))
        grad_image = None
        if need_image:
            grad_image = res[0][0]
            for r in res[1:]:
                grad_image = grad_image + r[0]
        return grad_image, torch.cat([r[1] for r in res], dim=1), None, None, None


def replicate_shift_parts(x: torch.Tensor, dim: int, s: int) -> list[tuple[int, int, torch.Tensor]]:
    """``y[i] = x[clamp(i + s, 0, n - 1)]`` along ``dim`` (a shift with replicated edges) as pieces
    ``(start, length, values)``: ``y.narrow(dim, start, length)`` equals ``values``, a view of ``x``
    (the repeated edge has length 1 along ``dim`` and broadcasts).  For sums and distances against
    a shifted image without making the shifted copy."""
    n = x.shape[dim]
    s = max(-(n - 1), min(n - 1, int(s)))
    if s == 0:
        return [(0, n, x)]
    if s > 0:  # x[i + s] inside, x[n - 1] for the last s
        return [(0, n - s, x.narrow(dim, s, n - s)), (n - s, s, x.narrow(dim, n - 1, 1))]
    return [(0, -s, x.narrow(dim, 0, 1)), (-s, n + s, x.narrow(dim, 0, n + s))]  # x[0] first, then x[i + s]


def channels_last(image: torch.Tensor) -> torch.Tensor:
    """``image`` ``(B, C, *S)`` laid out channels-last (same values, same shape): ``grid_sample`` then
    reads a corner's C values from one cache line instead of from C planes far apart.  For sampling
    many channels at scattered points of a large grid (the refinement's 40k random points in 12 MIND
    maps at 1 mm, 417 MB): 3.3x faster at 1 thread, bitwise the same values and gradients."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(image.dim())
    return image if fmt is None else image.contiguous(memory_format=fmt)


def random_box_voxels(
    lo: torch.Tensor, hi: torch.Tensor, strides: torch.Tensor, n: int, generator: torch.Generator, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` voxels drawn uniformly in the box ``[lo, hi]`` (per axis, ``dtype``), as elastix's random
    sampler does: ``(coords (ndim, n) rounded to voxels, flat indices (n,))`` for a grid with ``strides``.
    The draws are continuous positions scaled to the box, so two near-identical grids get the same points.
    One draw of :func:`random_box_voxel_draws` (the same values)."""
    idx, flat = random_box_voxel_draws(lo, hi, strides, n, 1, generator, dtype)
    return idx[0], flat[0]


def random_box_voxel_draws(
    lo: torch.Tensor, hi: torch.Tensor, strides: torch.Tensor, n: int, draws: int, generator: torch.Generator, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` successive :func:`random_box_voxels` at once: ``(coords (draws, ndim, n), flat indices
    (draws, n))``, the same values as ``draws`` calls of it, leaving ``generator`` where they would (the
    CPU generator fills a tensor in order, one value after another).  One host-to-device copy for a
    whole loop instead of one per step: on a GPU each blocking copy waits for the queue to drain."""
    nd = lo.shape[0]
    u = torch.rand((draws, nd, n), generator=generator, dtype=dtype).to(lo.device)
    idx = torch.round(lo.view(1, nd, 1) + u * (hi - lo).view(1, nd, 1))
    return idx, (idx.long() * strides.view(1, nd, 1)).sum(1)


def warp(
    image: torch.Tensor, disp_vox: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """``image(x + disp_vox(x))``: pull ``image`` through a displacement on the same grid."""
    coords = identity_coords(disp_vox.shape[2:], disp_vox.device, disp_vox.dtype).unsqueeze(0) + disp_vox
    return sample(image, coords, mode=mode, padding_mode=padding_mode)


def resize_field(disp_vox: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel-unit field to ``out_shape`` and rescale its values by ``(N_out-1)/(N_in-1)`` per axis."""
    in_shape = disp_vox.shape[2:]
    out_shape = tuple(int(n) for n in out_shape)
    if tuple(in_shape) == out_shape:
        return disp_vox
    mode = "bilinear" if len(out_shape) == 2 else "trilinear"
    out = F.interpolate(disp_vox, size=out_shape, mode=mode, align_corners=True)
    scale = torch.tensor(
        [(no - 1) / max(ni - 1, 1) for ni, no in zip(in_shape, out_shape, strict=False)],
        device=out.device,
        dtype=out.dtype,
    )
    return out * scale.view(1, -1, *([1] * len(out_shape)))


@functools.lru_cache(maxsize=64)
def _linear_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` weights of linear interpolation with ``align_corners=True`` (two per row)."""
    pos = torch.linspace(0, n_in - 1, n_out, dtype=torch.float64) if n_out > 1 else torch.zeros(1, dtype=torch.float64)
    i0 = pos.floor().clamp(0, max(n_in - 2, 0)).long()
    w = pos - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m[rows, i0] = 1 - w
    if n_in > 1:
        m[rows, i0 + 1] += w
    return m.to(dtype=dtype, device=device)


def linear_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear"/"trilinear", align_corners=True)`` for ``x`` ``(B, C, *S)``,
    as one small matrix product per axis (linear interpolation is separable).  The same values to float
    rounding; on the CPU 4-6x faster than ATen's upsampling kernel for the synthesizer's velocity grids
    (``(8, 3, 24^3) -> 48^3``: 27 -> 6.5 ms at one thread)."""
    nd = spatial_dims(x)
    size = tuple(int(n) for n in size)
    mats = [_linear_matrix(int(ni), no, x.dtype, x.device) for ni, no in zip(x.shape[2:], size, strict=True)]
    y = torch.matmul(x, mats[-1].T)  # last axis
    y = torch.matmul(mats[-2], y)  # second-to-last axis, batched over the leading ones
    if nd == 3:
        b, c, a = y.shape[:3]
        y = torch.matmul(mats[0], y.reshape(b, c, a, -1)).view(b, c, *size)
    return y


def apply_matrix(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply an ``(n+1, n+1)`` homogeneous matrix to points ``(n, *S)`` (coordinates first)."""
    nd = matrix.shape[0] - 1
    return torch.einsum("ij,j...->i...", matrix[:nd, :nd], points) + matrix[:nd, nd].view(
        nd, *([1] * (points.dim() - 1))
    )


def affine_coords(vox_to_vox: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates ``(1, ndim, *out_shape)`` of ``M @ [p, 1]`` for each output voxel ``p``.

    ``vox_to_vox`` is an ``(ndim+1, ndim+1)`` homogeneous matrix from output voxels to input voxels.
    """
    ident = identity_coords(out_shape, vox_to_vox.device, vox_to_vox.dtype)
    return apply_matrix(vox_to_vox, ident).unsqueeze(0)


def _norm_scale(shape: Sequence[int], device, dtype) -> torch.Tensor:
    """Voxel -> normalized-coordinate factor per axis, ``(1, ndim, 1, ...)`` in array-axis order."""
    nd = len(shape)
    return torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=device, dtype=dtype).view(1, nd, *([1] * nd))


def exp_velocity(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring of ``velocity`` ``(B, ndim, *S)`` (voxels) with ``steps`` squarings.

    Mathematically ``integrate.compose(d, d)`` repeated (border padding), but carried out in
    grid_sample's normalized (x, y[, z]) coordinates with the identity grid built once, which
    removes the per-step conversions (about 2x faster on the CPU, forward and backward).
    """
    shape = velocity.shape[2:]
    scale = _norm_scale(shape, velocity.device, velocity.dtype)
    d = (velocity * (scale / (2**steps))).flip(1)  # normalized units, (x, y[, z]) channel order
    ident = coords_vox_to_norm(identity_coords(shape, velocity.device, velocity.dtype).unsqueeze(0), shape)
    for _ in range(steps):
        grid = ident + d.movedim(1, -1)
        d = d + _grid_sample(d, grid, "bilinear", "border")
    return d.flip(1) / scale
