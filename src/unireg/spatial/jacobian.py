"""Jacobian determinants of ``x -> x + disp_vox(x)`` and the usual regularity figures."""

from __future__ import annotations

import torch

__all__ = ["jacobian_determinant", "folding_stats"]


def jacobian_determinant(disp_vox: torch.Tensor, spacing=None) -> torch.Tensor:
    """det(I + grad u) with central differences (one-sided at borders).

    ``disp_vox``: ``(B, ndim, *spatial)`` in voxels.  Returns ``(B, *spatial)``.  Voxel units give the
    same determinant as millimetres for any isotropic or anisotropic spacing (the scaling cancels),
    so ``spacing`` is accepted only for interface symmetry.
    """
    nd = disp_vox.shape[1]
    grads = []
    for comp in range(nd):
        g = torch.gradient(disp_vox[:, comp], dim=tuple(range(1, nd + 1)))
        grads.append(torch.stack(g, dim=-1))
    jac = torch.stack(grads, dim=-2)  # (B, *spatial, nd(component), nd(axis))
    jac = jac + torch.eye(nd, device=jac.device, dtype=jac.dtype)
    return torch.linalg.det(jac.double()).to(disp_vox.dtype)


def folding_stats(jac_det: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Percentage of voxels with det(J) <= 0 and the standard deviation of log det(J) (SDlogJ)."""
    j = jac_det.flatten() if mask is None else jac_det[mask.bool()]
    if j.numel() == 0:
        return {"folded_percent": 0.0, "sdlogj": 0.0, "jac_min": 1.0, "jac_max": 1.0}
    folded = (j <= 0).double().mean().item() * 100.0
    logj = torch.log(j.double().clamp_min(1e-9))
    return {
        "folded_percent": folded,
        "sdlogj": float(logj.std().item()) if j.numel() > 1 else 0.0,
        "jac_min": float(j.min().item()),
        "jac_max": float(j.max().item()),
    }
