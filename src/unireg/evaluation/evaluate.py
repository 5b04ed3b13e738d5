"""Score registration result folders (``unireg register`` outputs, or any folder holding an ITK
displacement field ``warp.nii.gz`` on the fixed grid, e.g. the benchmark's ANTs/elastix runs).

A *result folder* holds some of: ``report.json``, ``warp.nii.gz`` (fixed -> moving, RAS mm in
memory, LPS on disk), ``inverse_warp.nii.gz``, ``jacobian.nii.gz``, ``warped_labels.nii.gz``.
Figures produced per folder (all optional, present when their inputs are):

- ``dice_<label>``, ``dice_mean``: fixed labels vs warped moving labels (``warped_labels.nii.gz``,
  or ``moving_labels`` pulled through ``warp.nii.gz`` with the label resampling of ``register``,
  :func:`unireg.resample.resample_fixed_grid`);
- ``hd95_mean`` (mm): mean over labels of the 95th percentile symmetric surface distance;
- ``epe_mean``/``epe_max`` (mm): |warp - true warp| over the fixed grid (``mask`` restricts it);
- ``tre_mean``/``tre_max`` (mm, and ``tre_before_mean``): landmarks, moving points carried onto the
  fixed image through ``inverse_warp.nii.gz`` (or fixed points through ``warp.nii.gz``);
- ``folded_percent`` (% of voxels with det(J) <= 0), ``sdlogj``;
- ``seconds`` (``report.json`` ``runtime_s.total``) and ``peak_mb`` (``report.json`` ``peak_rss_mb``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import UniRegError
from ..io.atomic import atomic_path
from ..io.image import Image, read_image
from ..io.points import read_points
from ..io.warp import read_displacement_field
from ..resample import onto_grid, resample_fixed_grid
from ..spatial.frames import disp_world_to_vox
from ..spatial.jacobian import jacobian_determinant
from ..spatial.world import field_on_grid, warp_points
from .metrics import dice, endpoint_error, hd95, jacobian_stats, target_registration_error

__all__ = ["evaluate_result", "evaluate_path", "summarize", "format_table", "write_metrics", "is_result_dir",
           "jacobian_from_warp", "COLUMNS"]

# Column order of the printed table (others follow alphabetically).
COLUMNS = ["name", "dice_mean", "hd95_mean", "epe_before_mean", "epe_mean", "epe_max", "epe_region", "tre_before_mean",
           "tre_mean", "tre_max", "folded_percent", "sdlogj", "seconds", "peak_mb"]


def is_result_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "warp.nii.gz").is_file() or (p / "warp.nii").is_file() or (p / "report.json").is_file())


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):  # images follow the input's format (--format)
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def jacobian_from_warp(disp_mm_ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """det(J) of ``x -> x + u(x)`` for a world-space field ``(ndim, *S)`` (RAS mm) on ``affine``'s grid.

    This is the Jacobian of the full map (affine included), whereas ``jacobian.nii.gz`` written by
    ``register`` holds the deformable part only; ``jacobian="file"``/``"warp"`` picks one.
    """
    disp_vox = disp_world_to_vox(disp_mm_ras, affine)
    return jacobian_determinant(torch.from_numpy(disp_vox)[None])[0].numpy()


def _read_csv_points(path) -> np.ndarray:
    return read_points(path)[0]


def _warp_labels(warp: tuple[np.ndarray, np.ndarray], moving_labels: Image, ref: Image) -> np.ndarray:
    """Moving labels pulled through a world-space warp onto ``ref``'s grid, with the label resampling
    that ``register --labels`` uses (:func:`unireg.resample.resample_fixed_grid`)."""
    shape, aff = ref.spatial_shape, ref.affine
    nd = len(shape)
    field = field_on_grid(warp[0], warp[1], shape, aff).numpy()
    disp_vox = torch.from_numpy(disp_world_to_vox(field, aff))[None]
    out = resample_fixed_grid(shape, aff, aff, np.eye(nd + 1), disp_vox, torch.zeros(shape),
                              np.zeros((1,) + moving_labels.spatial_shape, np.float32), moving_labels.affine,
                              labels=moving_labels.data[0])
    return out["labels"]


def evaluate_result(
    folder: str | os.PathLike,
    *,
    fixed_labels: str | os.PathLike | None = None,
    moving_labels: str | os.PathLike | None = None,
    true_warp: str | os.PathLike | None = None,
    fixed_points: str | os.PathLike | None = None,
    moving_points: str | os.PathLike | None = None,
    labels: Sequence[int] | None = None,
    jacobian: str = "auto",
    epe_mask: str | os.PathLike | None = "auto",
) -> dict:
    """Metrics of one result folder as a flat ``{name: value}`` dict (floats in mm, %, s, MiB).

    Parameters
    ----------
    folder : result folder (see the module docstring).
    fixed_labels : label map of the fixed image (on its grid or its own, resampled onto the warped labels'); default
        ``report.json``'s ``fixed_labels`` if it exists.
    moving_labels : label map on the moving grid, warped through ``warp.nii.gz`` when the folder has
        no ``warped_labels.nii.gz`` (every method's labels then get the same interpolation).
    true_warp : ground-truth ITK displacement field (fixed -> moving), compared with ``warp.nii.gz``.
    fixed_points, moving_points : landmark CSVs (``x,y[,z]``, RAS mm), corresponding row by row.
    labels : labels to score (default: every non-zero label present).
    jacobian : ``"file"`` (``jacobian.nii.gz``), ``"warp"`` (recomputed from ``warp.nii.gz`` on the
        fixed grid, the same formula for every method) or ``"auto"`` (file if present, else warp).
    epe_mask : where EPE is scored.  ``"auto"`` (default): inside the object, i.e. the non-zero fixed
        labels, else the foreground of the fixed image (report.json's ``fixed``): the background is
        where every method extrapolates, and averaging over it made a good registration look worse
        than none.  A path: a mask on the fixed grid (non-zero = scored).  ``"all"`` or None: every voxel.
        ``epe_before_mean`` is the EPE of no registration (the true displacement's magnitude) in the
        same region; ``epe_region`` says which region was used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UniRegError("result folder not found", folder)
    report: dict = {}
    if (folder / "report.json").is_file():
        try:
            report = json.loads((folder / "report.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UniRegError(f"cannot read report.json ({type(exc).__name__})", folder / "report.json") from None
    row: dict = {"name": folder.name}
    warp_path = _find(folder, "warp")
    warp = read_displacement_field(warp_path) if warp_path is not None else None

    # --- overlap ---------------------------------------------------------------------------
    if fixed_labels is None and report.get("fixed_labels") and Path(report["fixed_labels"]).is_file():
        fixed_labels = report["fixed_labels"]
    if fixed_labels is not None:
        flab = read_image(fixed_labels, labels=True)
        wl_path = _find(folder, "warped_labels")
        warped = None
        if wl_path is not None:
            wl = read_image(wl_path, labels=True)
            # scored on the warped labels' grid (the fixed image's), as register's report does: fixed labels
            # on a grid of their own are resampled onto it in world space
            flab = onto_grid(flab, wl, "fixed label map", "warped labels")
            warped = wl.data[0]
        elif moving_labels is not None and warp is not None:
            warped = _warp_labels(warp, read_image(moving_labels, labels=True), flab)
        if warped is not None:
            d = dice(flab.data[0], warped, labels)
            for k, v in d.items():
                row[f"dice_{k}"] = v
            row["hd95_mean"] = hd95(flab.data[0], warped, flab.spacing, labels)["mean"]

    # --- deformation accuracy ----------------------------------------------------------------
    if true_warp is not None:
        if warp is None:
            raise UniRegError("--true-warp given but the folder has no warp.nii.gz", folder)
        t_disp, t_aff = read_displacement_field(true_warp)
        est = field_on_grid(warp[0], warp[1], t_disp.shape[1:], t_aff).numpy()
        mask, region = _epe_mask(epe_mask, fixed_labels, report, folder, tuple(t_disp.shape[1:]), t_aff)
        e = endpoint_error(est, t_disp, mask)
        before = endpoint_error(np.zeros_like(t_disp), t_disp, mask)
        row["epe_before_mean"] = before["mean"]
        row["epe_mean"], row["epe_max"] = e["mean"], e["max"]
        row["epe_region"] = region

    # --- landmarks -----------------------------------------------------------------------------
    if (fixed_points is None) != (moving_points is None):
        raise UniRegError("landmark TRE needs both --fixed-points and --moving-points")
    if fixed_points is not None:
        fp, mp = _read_csv_points(fixed_points), _read_csv_points(moving_points)
        if fp.shape != mp.shape:
            raise UniRegError(f"landmark files differ: {fp.shape[0]} fixed vs {mp.shape[0]} moving points",
                              moving_points)
        inv_path = _find(folder, "inverse_warp")
        if inv_path is not None:  # moving landmarks onto the fixed image
            mapped = warp_points(*read_displacement_field(inv_path), mp)
            t = target_registration_error(mapped, fp)
        elif warp is not None:  # fixed landmarks into the moving image
            t = target_registration_error(warp_points(*warp, fp), mp)
        else:
            raise UniRegError("landmark TRE needs inverse_warp.nii.gz or warp.nii.gz in the folder", folder)
        row["tre_before_mean"] = target_registration_error(fp, mp)["mean"]
        row["tre_mean"], row["tre_max"] = t["mean"], t["max"]

    # --- regularity ---------------------------------------------------------------------------
    jac_path = _find(folder, "jacobian")
    jac = None
    if jacobian not in ("auto", "file", "warp"):
        raise UniRegError(f"jacobian must be auto, file or warp, got {jacobian!r}")
    if jacobian in ("auto", "file") and jac_path is not None:
        jac = read_image(jac_path).data[0]
    elif jacobian in ("auto", "warp") and warp is not None:
        jac = jacobian_from_warp(*warp)
    if jac is not None:
        s = jacobian_stats(jac)
        row["folded_percent"], row["sdlogj"] = s["folded_percent"], s["sdlogj"]
    elif "folded_percent" in report:
        row["folded_percent"], row["sdlogj"] = report["folded_percent"], report.get("sdlogj", float("nan"))

    # --- cost (from report.json) -----------------------------------------------------------------
    rt = report.get("runtime_s")
    if isinstance(rt, dict) and "total" in rt:
        row["seconds"] = float(rt["total"])
    elif isinstance(rt, (int, float)):
        row["seconds"] = float(rt)
    for key in ("peak_rss_mb", "peak_mb", "peak_memory_mb"):
        if key in report:
            row["peak_mb"] = float(report[key])
            break
    return row


def _mask_on(img, shape, aff) -> np.ndarray:
    """Non-zero voxels of ``img`` on the grid ``(shape, aff)`` (nearest neighbour when the grids differ)."""
    m = img.data[0] != 0
    if img.spatial_shape == tuple(shape) and np.allclose(img.affine, aff, atol=1e-4):
        return m
    import torch

    from ..spatial.world import pull

    t = torch.from_numpy(m.astype(np.float32))[None]
    return pull(t, img.affine, tuple(shape), aff, mode="nearest")[0].numpy() > 0.5


def _epe_mask(epe_mask, fixed_labels, report: dict, folder: Path, shape, aff):
    """(mask or None, region name) for EPE; see :func:`evaluate_result`."""
    from ..io.image import read_image

    if epe_mask is None or (isinstance(epe_mask, str) and epe_mask == "all"):
        return None, "all voxels"
    if not (isinstance(epe_mask, str) and epe_mask == "auto"):
        return _mask_on(read_image(epe_mask, labels=True), shape, aff), f"mask {Path(epe_mask).name}"
    if fixed_labels is not None:
        return _mask_on(read_image(fixed_labels, labels=True), shape, aff), "fixed labels"
    fixed = _resolve_path(report.get("fixed"), folder)
    if fixed is not None:
        from ..preprocess import normalize_intensity
        from .qc_score import foreground_mask

        img = read_image(fixed)
        fg = foreground_mask(normalize_intensity(img.data[0])).numpy()
        from ..io.image import Image

        return _mask_on(Image(fg[None].astype(np.uint8), img.affine), shape, aff), "fixed image foreground"
    return None, "all voxels (no fixed image or labels found for a mask)"


def _resolve_path(p, folder: Path) -> Path | None:
    if not p:
        return None
    q = Path(p)
    if not q.is_absolute():
        q = folder / q
    return q if q.is_file() else None


def summarize(rows: list[dict]) -> dict:
    """Mean over rows of every numeric column (nan skipped); ``name`` is ``"mean"``."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "name"]
    out: dict = {"name": "mean"}
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(float(r[k]))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def evaluate_path(path: str | os.PathLike, **kwargs) -> list[dict]:
    """One row for a result folder, or one per result sub-folder (sorted) plus a ``mean`` row."""
    p = Path(path)
    if is_result_dir(p):
        return [evaluate_result(p, **kwargs)]
    if not p.is_dir():
        raise UniRegError("not a folder", p)
    subs = sorted(d for d in p.iterdir() if is_result_dir(d))
    if not subs:
        raise UniRegError("no result folders here (none holds warp.nii.gz or report.json)", p)
    rows = [evaluate_result(d, **kwargs) for d in subs]
    return rows + [summarize(rows)]


def _columns(rows: Iterable[dict]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    head = [c for c in COLUMNS if c in keys]
    dice_cols = sorted((k for k in keys if k.startswith("dice_") and k != "dice_mean"), key=lambda k: (len(k), k))
    rest = sorted(k for k in keys if k not in head and k not in dice_cols)
    return head[:1] + dice_cols + head[1:] + rest


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    """Plain-text table (one line per row), columns in :data:`COLUMNS` order."""
    cols = _columns(rows)
    cells = [cols] + [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(s.rjust(w) if j else s.ljust(w) for j, (s, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_metrics(rows: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` (atomically) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    paths = {"json": out / "metrics.json", "csv": out / "metrics.csv"}
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps({"rows": clean}, indent=2) + "\n")
    with atomic_path(paths["csv"]) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in cols})
    return paths
