"""A one-picture quality check of a registration (``qc.png``) and the plane helpers the HTML report shares.

Display convention (shared by :func:`render_qc_png` and :mod:`unireg.reports.html`): radiological
views in LPS, as ITK-SNAP shows them.  The world axis closest to each array axis (from the affine;
RAS identity if none) decides the layout: axial planes show LPS x to the right and y downwards
(anterior up, patient left on the right), coronal x right and superior up, sagittal y right
(anterior left) and superior up; a 2-D image (the world x-y plane) is shown like an axial plane,
so a PNG read by :func:`unireg.io.image.read_image` appears upright.  3-D volumes are shown as
their three orthogonal mid-planes.  Pixels keep the physical aspect of ``spacing``.

Nothing here touches pyplot or the global matplotlib backend: figures are drawn on an Agg canvas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from unireg.io.atomic import atomic_path
from unireg.spatial.frames import affine_ras_to_lps, disp_world_to_vox
from unireg.spatial.frames import spacing as affine_spacing
from unireg.spatial.world import pull

__all__ = [
    "Plane",
    "planes_for",
    "render_qc_png",
    "robust_range",
    "normalize",
    "checkerboard",
    "to_display",
    "disp_world_to_vox",
    "before_image",
    "grid_line_positions",
    "FOLD_COLOR",
]

#: Colour that marks folded voxels (det J <= 0) everywhere in UniReg's pictures.
FOLD_COLOR = (57, 255, 20)  # "neon green": absent from the gray and red/blue maps around it

# normal world axis -> (name, world axis to the right, world axis downwards, +1: down = increasing)
_VIEWS = {0: ("sagittal", 1, 2, -1), 1: ("coronal", 0, 2, -1), 2: ("axial", 0, 1, +1)}


@dataclass(frozen=True)
class Plane:
    """A displayed plane: ``axis``/``index`` pick the slice (``axis=None`` for a 2-D image); array axis
    ``row_axis`` runs down the picture and ``col_axis`` to the right, each reversed if flipped."""

    name: str
    axis: int | None
    index: int | None
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool

    def take(self, vol: np.ndarray) -> np.ndarray:
        """The plane of ``vol`` (*S) as a 2-D array in display orientation (rows down, columns right)."""
        s = vol if self.axis is None else np.take(vol, self.index, axis=self.axis)
        if self.row_axis > self.col_axis:
            s = s.T
        if self.flip_rows:
            s = s[::-1]
        if self.flip_cols:
            s = s[:, ::-1]
        return s

    def pixel_spacing(self, spacing: Sequence[float]) -> tuple[float, float]:
        """(row, column) pixel size in mm."""
        return float(spacing[self.row_axis]), float(spacing[self.col_axis])

    def in_plane_disp(self, disp_vox_plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(down, right) displacement in pixels of the displayed plane, from ``(ndim, H, W)`` voxel
        components already taken with :meth:`take`."""
        d_down, d_right = disp_vox_plane[self.row_axis], disp_vox_plane[self.col_axis]
        return (-d_down if self.flip_rows else d_down), (-d_right if self.flip_cols else d_right)

    def voxel_coords(self, shape: Sequence[int], out_hw: tuple[int, int]) -> np.ndarray:
        """Voxel coordinates ``(ndim, h, w)`` in a grid of ``shape`` of an ``out_hw`` resampling of the
        displayed plane (corners onto corners), for ``scipy.ndimage.map_coordinates``."""
        h_in, w_in = int(shape[self.row_axis]), int(shape[self.col_axis])
        h, w = out_hw
        r = np.linspace(0.0, h_in - 1.0, h)
        c = np.linspace(0.0, w_in - 1.0, w)
        if self.flip_rows:
            r = r[::-1]
        if self.flip_cols:
            c = c[::-1]
        coords = np.empty((len(shape), h, w), dtype=np.float64)
        coords[self.row_axis] = r[:, None]
        coords[self.col_axis] = c[None, :]
        if self.axis is not None:
            coords[self.axis] = self.index
        return coords


def planes_for(shape: Sequence[int], affine: np.ndarray | None = None) -> list[Plane]:
    """Mid-planes of a grid of ``shape`` (3-D: ``sagittal``, ``coronal``, ``axial``; 2-D: ``plane``).

    ``affine`` (4x4 voxel-to-world RAS) orients them (see the module docstring); without it, or
    when an array axis has no clearly dominant world axis, array axes are taken as RAS x, y, z.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D grid, got shape {shape}")
    lin = affine_ras_to_lps(np.eye(4) if affine is None else affine)[:3, :nd]
    dom = [int(np.argmax(np.abs(lin[:, k]))) for k in range(nd)]
    if len(set(dom)) != nd or (nd == 2 and 2 in dom):
        lin = affine_ras_to_lps(np.eye(4))[:3, :nd]
        dom = list(range(nd))
    sign = [lin[dom[k], k] >= 0 for k in range(nd)]  # True: array axis runs along +LPS
    views = [(None, None, 2)] if nd == 2 else [(dom.index(w), shape[dom.index(w)] // 2, w) for w in (0, 1, 2)]
    planes = []
    for axis, index, w in views:
        name, right_w, down_w, down_sign = _VIEWS[w]
        col_axis, row_axis = dom.index(right_w), dom.index(down_w)
        planes.append(
            Plane("plane" if nd == 2 else name, axis, index, row_axis, col_axis,
                  flip_rows=sign[row_axis] != (down_sign > 0), flip_cols=not sign[col_axis])
        )
    return planes


def robust_range(*arrays: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    """Percentile window over the finite values of ``arrays`` (never empty: falls back to min/max)."""
    vals = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(vals, [lo, hi])
    if not b > a:
        a, b = float(vals.min()), float(vals.max())
    if not b > a:
        b = a + 1.0
    return float(a), float(b)


def normalize(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``window`` to [0, 1] (clipped, nan -> 0), float32."""
    a, b = window
    out = (np.asarray(x, dtype=np.float32) - a) / (b - a)
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0)


def checkerboard(a: np.ndarray, b: np.ndarray, pixel_mm: tuple[float, float], tiles: int = 8) -> np.ndarray:
    """Alternate square (in mm) tiles of two equally-shaped 2-D images, ``tiles`` along the longer side."""
    h, w = a.shape
    tile_mm = max(h * pixel_mm[0], w * pixel_mm[1]) / tiles
    r = (np.arange(h) * pixel_mm[0] // tile_mm).astype(int)
    c = (np.arange(w) * pixel_mm[1] // tile_mm).astype(int)
    mask = (r[:, None] + c[None, :]) % 2 == 0
    return np.where(mask, a, b)


def to_display(x: np.ndarray, ndim: int) -> np.ndarray:
    """``(*S)`` or channels-first ``(C, *S)`` -> ``(*S)`` float32 (channels averaged, e.g. RGB)."""
    x = np.asarray(x)
    if x.ndim == ndim + 1:
        x = x.mean(axis=0)
    if x.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D array (or channels-first), got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def before_image(moving: np.ndarray, moving_affine: np.ndarray, fixed_shape: Sequence[int],
                 fixed_affine: np.ndarray) -> np.ndarray:
    """The "before" picture: ``moving`` ``(C, *S_m)`` resampled onto the fixed grid by world
    coordinates only (no registration), linear, zero outside; channels averaged -> ``(*S_f)`` float32.

    The one routine behind ``qc.png``'s and ``report.html``'s "moving (before)" views.
    """
    m = np.asarray(moving, dtype=np.float32)
    if m.ndim == len(fixed_shape):
        m = m[None]
    t = torch.from_numpy(np.ascontiguousarray(m.mean(axis=0, keepdims=True)))
    return pull(t, moving_affine, tuple(int(n) for n in fixed_shape), fixed_affine)[0].numpy()


def grid_line_positions(h: int, w: int, pixel_mm: tuple[float, float], n_lines: int = 16):
    """Rows and columns of a grid whose cells are square in mm, ``n_lines`` along the longer side."""
    step_mm = max(h * pixel_mm[0], w * pixel_mm[1]) / n_lines
    sr, sc = max(step_mm / pixel_mm[0], 2.0), max(step_mm / pixel_mm[1], 2.0)
    rows = np.unique(np.round(np.arange(sr / 2, h, sr)).astype(int))
    cols = np.unique(np.round(np.arange(sc / 2, w, sc)).astype(int))
    return rows[rows < h], cols[cols < w]


def _deformed_grid_segments(d_down: np.ndarray, d_right: np.ndarray, pixel_mm, n_lines: int = 16):
    """Polylines (in pixel coordinates x=column, y=row) of a regular grid moved by (d_down, d_right)."""
    h, w = d_down.shape
    line_rows, line_cols = grid_line_positions(h, w, pixel_mm, n_lines)
    segs = []
    for r in line_rows:  # horizontal lines
        cols = np.arange(w)
        segs.append(np.stack([cols + d_right[r], r + d_down[r]], axis=1))
    for c in line_cols:  # vertical lines
        rows = np.arange(h)
        segs.append(np.stack([c + d_right[:, c], rows + d_down[:, c]], axis=1))
    return segs


def render_qc_png(
    path: str | os.PathLike,
    fixed: np.ndarray,
    before: np.ndarray,
    warped: np.ndarray,
    disp_mm: np.ndarray,
    jac: np.ndarray,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a one-figure QC picture of a registration to ``path`` (PNG, written atomically).

    Parameters
    ----------
    path : path-like
        Output PNG; its directory must exist.  Written to a temporary file there, then renamed.
    fixed, before, warped : array (*S)
        On the fixed grid (2-D or 3-D; a leading channel axis is averaged): the fixed image, the moving
        image resampled by world coordinates only, and the registered moving image.
    disp_mm : array (ndim, *S)
        Displacement in mm.  Components in **array-axis order** (``disp_vox * spacing``), unless
        ``affine`` is given, in which case they are **world RAS** components (as
        :func:`unireg.io.warp.read_displacement_field` returns them).
    jac : array (*S)
        Jacobian determinant; voxels with ``jac <= 0`` are marked in :data:`FOLD_COLOR`.
    spacing : sequence of float, optional
        mm per array axis (default: from ``affine``, else 1).
    title : str, optional
        Figure title.
    affine : array (4, 4), optional
        Voxel-to-world (RAS) matrix of the fixed grid; names the planes and converts ``disp_mm``.

    Returns
    -------
    Path
        ``path``.  The figure has 6 columns (fixed | moving (before) | warped | checkerboard |
        deformation grid | det J) and one row per plane (3 for 3-D, 1 for 2-D); its size is
        ``1320 x (40 + 230 * rows)`` pixels.
    """
    disp_mm = np.asarray(disp_mm)
    nd = disp_mm.shape[0]
    fixed, before, warped, jac = (to_display(x, nd) for x in (fixed, before, warped, jac))
    shape = fixed.shape
    for name, x in (("before", before), ("warped", warped), ("jac", jac), ("disp_mm", disp_mm[0])):
        if x.shape != shape:
            raise ValueError(f"{name} has spatial shape {x.shape}, fixed has {shape}")
    if spacing is None:
        spacing = affine_spacing(affine, nd) if affine is not None else np.ones(nd)
    spacing = [float(s) for s in spacing]
    planes = planes_for(shape, affine)

    fig = Figure(figsize=(13.2, 0.4 + 2.3 * len(planes)), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(planes), 6, squeeze=False))
    fig.subplots_adjust(left=0.025, right=0.995, bottom=0.01, top=1 - 0.45 / (0.4 + 2.3 * len(planes)),
                        wspace=0.04, hspace=0.08)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)

    fixed_p = {p.name: p.take(fixed) for p in planes}
    win_f = robust_range(*fixed_p.values())
    before_p = {p.name: p.take(before) for p in planes}
    warped_p = {p.name: p.take(warped) for p in planes}
    win_m = robust_range(*before_p.values(), *warped_p.values())
    jac_cmap = colormaps["RdBu_r"]
    jac_norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    fold_rgba = np.array([*FOLD_COLOR, 255], dtype=np.float32) / 255.0
    folded_total = float((jac <= 0).mean() * 100.0)
    columns = ["fixed", "moving (before)", "warped", "checkerboard", "deformation grid",
               f"det J (folded {folded_total:.3g}%)"]

    for r, p in enumerate(planes):
        row_mm, col_mm = p.pixel_spacing(spacing)
        aspect = row_mm / col_mm
        f = normalize(fixed_p[p.name], win_f)
        b = normalize(before_p[p.name], win_m)
        w = normalize(warped_p[p.name], win_m)
        if affine is not None:
            d_vox = disp_world_to_vox(np.stack([p.take(c) for c in disp_mm]), affine)
        else:
            d_vox = np.stack([p.take(c) / s for c, s in zip(disp_mm, spacing)])
        d_down, d_right = p.in_plane_disp(d_vox)
        j = p.take(jac)
        j_rgba = jac_cmap(jac_norm(j))
        j_rgba[j <= 0] = fold_rgba

        kw = dict(aspect=aspect, interpolation="nearest")
        ax = axes[r]
        ax[0].imshow(f, cmap="gray", vmin=0, vmax=1, **kw)
        ax[1].imshow(b, cmap="gray", vmin=0, vmax=1, **kw)
        ax[2].imshow(w, cmap="gray", vmin=0, vmax=1, **kw)
        ax[3].imshow(checkerboard(f, w, (row_mm, col_mm)), cmap="gray", vmin=0, vmax=1, **kw)
        ax[4].imshow(f, cmap="gray", vmin=0, vmax=1.6, **kw)  # dimmed so the grid stands out
        ax[4].add_collection(LineCollection(_deformed_grid_segments(d_down, d_right, (row_mm, col_mm)), colors="#ffb000",
                                            linewidths=0.6))
        ax[5].imshow(j_rgba, **kw)
        h, wd = f.shape
        for a in ax:
            a.set_xlim(-0.5, wd - 0.5)
            a.set_ylim(h - 0.5, -0.5)
            a.set_xticks([])
            a.set_yticks([])
            for s in a.spines.values():
                s.set_visible(False)
        ax[0].set_ylabel(p.name, fontsize=9)
        if r == 0:
            for a, c in zip(ax, columns):
                a.set_title(c, fontsize=9)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    return path
