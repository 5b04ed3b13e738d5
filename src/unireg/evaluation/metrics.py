"""Registration accuracy and regularity figures: NumPy arrays in, plain Python floats out.

Units: distances (HD95, endpoint error, TRE) are in **millimetres**; Dice is a fraction in [0, 1];
``folded_percent`` is a percentage of voxels; memory is in **MiB** (2**20 bytes).
Labels missing from both maps (when asked for explicitly) give ``nan``; means skip ``nan``.
"""

from __future__ import annotations

import math
import resource
import sys
from typing import Iterable, Sequence

import numpy as np
import torch

from unireg.spatial.jacobian import folding_stats

__all__ = [
    "dice",
    "hd95",
    "endpoint_error",
    "target_registration_error",
    "jacobian_stats",
    "peak_rss_mb",
]


def _labels(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    if labels is not None:
        return [int(v) for v in labels if int(v) != 0]
    present = np.union1d(np.unique(a), np.unique(b))
    return [int(v) for v in present if v != 0]


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def _as_label_array(x) -> np.ndarray:
    x = np.asarray(x)
    # Resampled label maps are sometimes stored as floats (e.g. 2.0000001): round, don't truncate.
    return np.rint(x).astype(np.int64) if np.issubdtype(x.dtype, np.floating) else x


def dice(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None = None) -> dict:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per label.

    Parameters
    ----------
    a, b : array (*S)
        Integer label maps on the same grid (floats are rounded).
    labels : iterable of int, optional
        Labels to score; default every non-zero label present in ``a`` or ``b``.

    Returns
    -------
    dict
        ``{label: dice}`` (``nan`` for a requested label absent from both) plus ``"mean"`` (over
        non-``nan`` labels; ``nan`` if there is none).
    """
    a, b = _as_label_array(a), _as_label_array(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    out: dict = {}
    for lab in _labels(a, b, labels):
        ma, mb = a == lab, b == lab
        denom = int(ma.sum()) + int(mb.sum())
        out[lab] = float(2.0 * np.logical_and(ma, mb).sum() / denom) if denom else float("nan")
    out["mean"] = _nanmean(v for k, v in out.items())
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    # Full connectivity erosion: a voxel is on the surface if any 3^n neighbour is outside.
    from scipy import ndimage  # lazy: ~0.4 s of import that a registration does not need

    st = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=st, border_value=0)


def _surface_distances(ma: np.ndarray, mb: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``ma`` to the surface of ``mb`` and vice versa."""
    # Crop to the union's bounding box plus one voxel: exact (both surfaces lie inside it, and the
    # margin keeps erosion identical; a mask touching the image border makes the crop touch it too).
    idx = np.nonzero(ma | mb)
    sl = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    ma, mb = ma[sl], mb[sl]
    from scipy import ndimage

    sa, sb = _surface(ma), _surface(mb)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return np.concatenate([dt_b[sa], dt_a[sb]])


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None, labels=None) -> dict:
    """95th percentile of the symmetric surface distance per label, in millimetres.

    Surfaces are the voxels of each label with a (full-connectivity) neighbour outside it; distances
    are Euclidean with ``spacing`` (mm per array axis, default 1) from every surface voxel of one map
    to the nearest surface voxel of the other, both directions pooled (as MedPy and MONAI do).

    Returns
    -------
    dict
        ``{label: hd95_mm}`` (``nan`` where the label is empty in either map) plus ``"mean"``.
    """
    a, b = _as_label_array(a), _as_label_array(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * a.ndim))
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {a.ndim}-D label map")
    out: dict = {}
    for lab in _labels(a, b, labels):
        ma, mb = a == lab, b == lab
        if not ma.any() or not mb.any():
            out[lab] = float("nan")
            continue
        out[lab] = float(np.percentile(_surface_distances(ma, mb, spacing), 95))
    out["mean"] = _nanmean(v for v in out.values())
    return out


def endpoint_error(disp_mm: np.ndarray, disp_true_mm: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Endpoint error ``|u - u_true|`` (mm) between two displacement fields ``(ndim, *S)`` in mm.

    ``mask`` (*S), optional, restricts the voxels scored.  Returns ``{"mean", "max", "p95"}`` in mm
    (``nan`` if the mask is empty).
    """
    d = np.asarray(disp_mm, dtype=np.float64) - np.asarray(disp_true_mm, dtype=np.float64)
    err = np.sqrt((d**2).sum(axis=0))
    if mask is not None:
        err = err[np.asarray(mask, dtype=bool)]
    err = err.ravel()
    if err.size == 0:
        return {"mean": float("nan"), "max": float("nan"), "p95": float("nan")}
    return {"mean": float(err.mean()), "max": float(err.max()), "p95": float(np.percentile(err, 95))}


def target_registration_error(points_a: np.ndarray, points_b: np.ndarray) -> dict:
    """Target registration error between corresponding landmarks ``(N, ndim)`` in mm.

    Returns ``{"mean", "max", "median", "std", "n"}`` (distances in mm; ``nan`` for no points).
    """
    pa, pb = np.asarray(points_a, dtype=np.float64), np.asarray(points_b, dtype=np.float64)
    if pa.shape != pb.shape or pa.ndim != 2:
        raise ValueError(f"expected two (N, ndim) point arrays of equal shape, got {pa.shape} and {pb.shape}")
    dist = np.linalg.norm(pa - pb, axis=1)
    if dist.size == 0:
        nan = float("nan")
        return {"mean": nan, "max": nan, "median": nan, "std": nan, "n": 0}
    return {
        "mean": float(dist.mean()),
        "max": float(dist.max()),
        "median": float(np.median(dist)),
        "std": float(dist.std()),
        "n": int(dist.size),
    }


def jacobian_stats(jac: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Regularity of a Jacobian-determinant map ``jac`` (*S).

    Delegates to :func:`unireg.spatial.jacobian.folding_stats` so the CLI's ``report.json`` and the
    benchmarks agree to the last digit.  Returns ``{"folded_percent" (% of voxels with det <= 0),
    "sdlogj" (std of log det, det clamped at 1e-9), "min", "max"}``.
    """
    t = torch.as_tensor(np.asarray(jac))
    m = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool))
    s = folding_stats(t, m)
    return {
        "folded_percent": float(s["folded_percent"]),
        "sdlogj": float(s["sdlogj"]),
        "min": float(s["jac_min"]),
        "max": float(s["jac_max"]),
    }


def peak_rss_mb() -> float:
    """Peak resident set size, in MiB, of this process or its largest waited-for child process.

    Uses ``getrusage`` (``ru_maxrss`` is KiB on Linux, bytes on macOS).  The larger of the two is
    reported, not the sum: children rarely run at the same time as the parent's peak, and a sum
    would overstate what a machine needs.
    """
    unit = 1.0 if sys.platform == "darwin" else 1024.0
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return float(peak * unit / 2**20)
