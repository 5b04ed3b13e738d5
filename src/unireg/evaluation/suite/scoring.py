"""Score any method's fixed->moving map on a suite case against the known true map.

Every method is scored the same way from a displacement field on the fixed grid (RAS mm, fixed->moving,
the content of an ITK ``warp.nii.gz``) and, where the method gives one, an inverse field on the moving
grid (moving->fixed, ``inverse_warp.nii.gz``):

- ``dice``: mean Dice over the fixed image's non-zero labels, moving labels pulled through the map
  (nearest neighbour), over the fixed voxels whose TRUE image lies inside the moving field of view;
- ``epe_mm`` / ``epe_p95_mm``: end-point error ``|u - u_true|`` inside the object (fixed labels > 0);
- ``folded_pct``: % of object voxels with ``det J <= 0``; ``logjac_err``: mean ``|log det J - log det J_true|``
  inside the object (``det J`` clamped at 1e-3);
- ``ic_mm``: inverse consistency: mean ``|q + w(q) - x|``, ``q = x + u(x)``, over object
  voxels that land inside the moving grid (nan without an inverse).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...spatial.grid import sample
from ...spatial.world import affine_nd
from ..metrics import dice as dice_scores
from .grids import world_to_voxel

__all__ = ["jacobian_det", "score_map"]


def jacobian_det(disp_mm: np.ndarray, affine4: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``det(I + du/dx)`` (world derivatives) at the ``mask`` voxels of the grid of ``affine4``: ``(M,)``."""
    nd = disp_mm.shape[0]
    lin_inv = np.linalg.inv(affine_nd(affine4, nd)[:nd, :nd])
    g = np.empty((int(mask.sum()), nd, nd), np.float64)  # du_c / dvox_a
    for c in range(nd):
        grads = np.gradient(disp_mm[c].astype(np.float32))
        for a in range(nd):
            g[:, c, a] = grads[a][mask]
        del grads
    jac = np.eye(nd) + g @ lin_inv
    return np.linalg.det(jac)


def _sample_field(field: np.ndarray, affine4: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear ``field`` ``(nd, *S)`` at world points ``(N, nd)``; returns values ``(N, nd)`` and an inside mask."""
    nd = field.shape[0]
    vox = world_to_voxel(points, affine4)
    inside = np.all((vox >= 0) & (vox <= np.array(field.shape[1:]) - 1), axis=1)
    coords = torch.from_numpy(vox.T.astype(np.float32)).reshape(1, nd, -1, *([1] * (nd - 1)))
    val = sample(torch.from_numpy(np.ascontiguousarray(field, np.float32))[None], coords, padding_mode="border")
    return val[0].reshape(nd, -1).T.double().numpy(), inside


def _pull_labels(labels: np.ndarray, affine4: np.ndarray, points: np.ndarray) -> np.ndarray:
    nd = labels.ndim
    vox = world_to_voxel(points, affine4)
    coords = torch.from_numpy(vox.T.astype(np.float32)).reshape(1, nd, -1, *([1] * (nd - 1)))
    out = sample(torch.from_numpy(labels.astype(np.float32))[None, None], coords, mode="nearest")
    return np.rint(out.reshape(-1).numpy()).astype(np.int64)


def score_map(case: dict, disp_mm: np.ndarray, inverse: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Scores of one method on one case (see module docstring).

    ``disp_mm``: ``(nd, *S_fixed)`` RAS mm fixed->moving; ``inverse``: ``(field (nd, *S_moving), affine)``.
    """
    f_lab, f_aff = case["fixed_labels"]
    m_lab, m_aff = case["moving_labels"]
    mask = case["mask"]
    nd = f_lab.ndim
    if disp_mm.shape != (nd,) + f_lab.shape:
        raise ValueError(f"warp shape {disp_mm.shape} does not match the fixed grid {(nd,) + f_lab.shape}")
    if "_points" not in case:  # per-case constants, computed once for all methods
        axes = [np.arange(n, dtype=np.float64) for n in f_lab.shape]
        a = affine_nd(f_aff, nd)
        case["_points"] = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, nd) @ a[:nd, :nd].T + a[:nd, nd]
        true_all = case["true_warp_mm"].reshape(nd, -1).T
        vox_m = world_to_voxel(case["_points"] + true_all, m_aff)
        # Dice is scored where the true map lands inside the moving field of view (a crop hides the rest)
        case["_valid"] = np.all((vox_m >= -0.5) & (vox_m <= np.array(m_lab.shape) - 0.5), axis=1)
        case["_true_in"] = true_all[mask.reshape(-1)]
        case["_logdet_true"] = np.log(np.clip(jacobian_det(case["true_warp_mm"], f_aff, mask), 1e-3, None))
    p_all, valid, flat_mask = case["_points"], case["_valid"], mask.reshape(-1)
    u_all = disp_mm.reshape(nd, -1).T.astype(np.float64)
    warped = _pull_labels(m_lab, m_aff, p_all[valid] + u_all[valid])
    fixed_valid = f_lab.reshape(-1)[valid]
    ids = [int(v) for v in np.unique(f_lab) if v != 0]
    d = dice_scores(warped, fixed_valid, labels=ids)["mean"]
    p = p_all[flat_mask]
    u = u_all[flat_mask]
    q = p + u
    err = np.linalg.norm(u - case["_true_in"], axis=1)
    det = jacobian_det(disp_mm, f_aff, mask)
    logdet = np.log(np.clip(det, 1e-3, None))
    out = {
        "dice": float(d),
        "epe_mm": float(err.mean()),
        "epe_p95_mm": float(np.percentile(err, 95)),
        "folded_pct": float(100.0 * np.mean(det <= 0)),
        "logjac_err": float(np.mean(np.abs(logdet - case["_logdet_true"]))),
        "ic_mm": math.nan,
    }
    if inverse is not None:
        w, inside = _sample_field(inverse[0], inverse[1], q)
        if inside.any():
            out["ic_mm"] = float(np.linalg.norm(q + w - p, axis=1)[inside].mean())
    return out
