"""Chains of transforms, applied the way ``antsApplyTransforms -t A -t B ...`` applies them.

A chain maps points of the output (reference, fixed) space to the input (moving) space, which is
what resampling needs.  Measured against antspyx (tests/interop): for ``transformlist=[A, B]`` a
reference point ``x`` is sampled in the input image at ``B(A(x))``: the transform listed first
acts on the point first.  So ``[deformable_warp.nii.gz, affine.mat]`` is ``T(D(x))``, UniReg's whole
fixed->moving map, and ``[[affine.mat, 1], deformable_inverse_warp.nii.gz]`` is its inverse.

Elements: a displacement field file (ITK/ANTs NIfTI, intent 1007: ``x + u(x)``, ``u = 0`` outside
its grid as in ITK), an affine file (``.mat``/``.txt``/``.tfm``) or a 4x4 RAS matrix, each
optionally inverted (affines only; ANTs syntax ``[file,1]`` on the command line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UniRegError
from .interpolation import INTERPOLATIONS  # re-exported: unireg.transforms.INTERPOLATIONS

if TYPE_CHECKING:
    import torch

__all__ = ["Transform", "parse_transform_spec", "load_chain", "chain_map", "in_plane", "INTERPOLATIONS"]

# torch is imported where it is used: reading a chain (``load_chain``) needs numpy and nibabel only, so
# `unireg apply -t ...` reads its transforms while torch loads.


@dataclass
class Transform:
    """One element of a chain: ``kind`` is ``"affine"`` (``matrix`` 4x4 RAS) or ``"field"``
    (``disp`` ``(n, *S)`` RAS mm on ``affine``'s grid)."""

    kind: str
    matrix: np.ndarray | None = None
    disp: np.ndarray | None = None
    affine: np.ndarray | None = None
    source: str = ""


_SPEC = re.compile(r"^\[\s*(.+?)\s*,\s*([01])\s*\]$")


def parse_transform_spec(spec: str) -> tuple[str, bool]:
    """``"file"`` -> (file, False); ANTs' ``"[file,1]"`` -> (file, True)."""
    m = _SPEC.match(spec.strip())
    if m:
        return m.group(1), m.group(2) == "1"
    return spec, False


def load_transform(item, invert: bool = False) -> Transform:
    """A path (field or affine file), a 4x4 matrix, or a ``(path_or_matrix, invert)`` pair (a
    :class:`Transform` already loaded is returned as it is)."""
    from .io.transform import AFFINE_EXTS, read_affine
    from .io.warp import read_displacement_field

    if isinstance(item, Transform):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bool):
        item, invert = item
    if isinstance(item, np.ndarray):
        m = np.asarray(item, dtype=np.float64)
        if m.shape != (4, 4):
            raise UniRegError(f"an affine in a transform chain must be 4x4, got {m.shape}")
        return Transform("affine", matrix=np.linalg.inv(m) if invert else m, source="matrix")
    if isinstance(item, str):
        item, inv2 = parse_transform_spec(item)
        invert = invert or inv2
    p = Path(item)
    if not p.is_file():
        raise UniRegError("transform file not found", p)
    if p.suffix.lower() in AFFINE_EXTS:
        m = read_affine(p)
        return Transform("affine", matrix=np.linalg.inv(m) if invert else m, source=str(p))
    if invert:
        raise UniRegError(
            "a displacement field cannot be inverted here; use the inverse warp UniReg wrote "
            "(inverse_warp.nii.gz / deformable_inverse_warp.nii.gz)",
            p,
        )
    disp, aff = read_displacement_field(p)
    return Transform("field", disp=disp, affine=aff, source=str(p))


def load_chain(items) -> list[Transform]:
    """Every element of ``items`` (see :func:`load_transform`); an empty chain is an error."""
    chain = [load_transform(t) for t in items]
    if not chain:
        raise UniRegError("no transform given (use -t FILE, repeatable, in antsApplyTransforms order)")
    return chain


def in_plane(chain: list[Transform], layout) -> list[Transform]:
    """``chain`` seen in the plane frame of a single slice read as a 2-D image (``layout``, a
    :class:`unireg.io.slices.SliceLayout`): affines turned into that frame (their part across the plane
    dropped), 3-D fields on one-voxel-thick grids as the 2-D fields of their plane; 2-D fields as they are."""
    from .io.slices import field_to_plane, matrix_to_plane

    out = []
    for t in chain:
        if t.kind == "affine":
            assert t.matrix is not None
            out.append(Transform("affine", matrix=matrix_to_plane(t.matrix, layout), source=t.source))
        elif t.disp is not None and t.affine is not None and t.disp.shape[0] == 3:
            flat = field_to_plane(t.disp, t.affine)
            if flat is None:
                raise UniRegError(
                    "a 3-D displacement field more than one voxel thick cannot map a single slice", t.source
                )
            out.append(Transform("field", disp=flat[0], affine=flat[1], source=t.source))
        else:
            out.append(t)
    return out


def _field_at(t: Transform, world: torch.Tensor) -> torch.Tensor:
    """Displacement ``u(world)`` (RAS mm), zero outside the field's grid (ITK's convention)."""
    import torch

    from .spatial.grid import apply_matrix, sample
    from .spatial.world import affine_nd

    assert t.disp is not None and t.affine is not None  # a "field" transform
    nd = t.disp.shape[0]
    inv = torch.as_tensor(np.linalg.inv(affine_nd(t.affine, nd)), dtype=world.dtype, device=world.device)
    vox = apply_matrix(inv, world)
    d = torch.as_tensor(np.ascontiguousarray(t.disp), dtype=world.dtype, device=world.device)[None]
    u = sample(d, vox.unsqueeze(0), padding_mode="border")[0]
    size = torch.as_tensor(t.disp.shape[1:], dtype=world.dtype, device=world.device).view(
        nd, *([1] * (world.dim() - 1))
    )
    inside = ((vox >= -0.5) & (vox <= size - 0.5)).all(0, keepdim=True)
    return u * inside


def chain_map(chain: list[Transform], ndim: int):
    """``world_map(world, rows)`` for :func:`unireg.spatial.world.pull`: points ``(n, *S)`` through the chain."""
    from .spatial.grid import apply_matrix
    from .spatial.world import affine_nd

    for t in chain:
        n = t.disp.shape[0] if t.kind == "field" and t.disp is not None else ndim
        if n != ndim:
            raise UniRegError(f"{t.source}: a {n}-D displacement field in a {ndim}-D chain")

    import torch

    def world_map(world: torch.Tensor, rows=None) -> torch.Tensor:
        x = world
        for t in chain:
            if t.kind == "affine":
                assert t.matrix is not None
                x = apply_matrix(torch.as_tensor(affine_nd(t.matrix, ndim), dtype=x.dtype, device=x.device), x)
            else:
                x = x + _field_at(t, x)
        return x

    return world_map


def pull_bspline(image: np.ndarray, src_affine4, out_shape, out_affine4, world_map, chunk_voxels: int = 2_000_000):
    """Cubic B-spline resampling of ``image`` ``(*in)`` onto ``(out_shape, out_affine4)`` through ``world_map``
    (zero outside the input, as ITK's BSplineInterpolateImageFunction with a zero default value)."""
    import torch
    from scipy import ndimage

    from .spatial.grid import apply_matrix
    from .spatial.world import affine_nd, slab_voxels, slabs

    nd = len(out_shape)
    coeff = ndimage.spline_filter(np.asarray(image, dtype=np.float64), order=3, mode="mirror")
    src = torch.as_tensor(np.linalg.inv(affine_nd(src_affine4, nd)), dtype=torch.float64)
    out_a = torch.as_tensor(affine_nd(out_affine4, nd), dtype=torch.float64)
    out = np.empty(tuple(out_shape), dtype=np.float32)
    size = np.asarray(image.shape, dtype=np.float64).reshape(nd, *([1] * nd))
    for rows in slabs(out_shape, chunk_voxels):
        w = apply_matrix(out_a, slab_voxels(out_shape, rows, torch.float64))
        if world_map is not None:
            w = world_map(w, rows)
        v = apply_matrix(src, w).numpy()
        vals = ndimage.map_coordinates(coeff, v, order=3, mode="mirror", prefilter=False)
        inside = np.all((v >= -0.5) & (v <= size - 0.5), axis=0)
        out[rows] = np.where(inside, vals, 0.0)
    return out
