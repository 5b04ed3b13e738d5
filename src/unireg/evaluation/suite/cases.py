"""The frozen case list and the pair builder.

A case is one fixed/moving pair: an anatomy (``mni`` at native 1 mm, ``labels``, ``body``), a deformation
family, an intensity family and a grid family, all drawn from ``SUITE_SEED`` and the case's position
in the list, so the same arguments always give the same arrays.  Families are cycled so that every
deformation family meets several intensity, grid and anatomy families.

HELD OUT MEANS HELD OUT: the families in ``HELD_OUT`` are never drawn by any training code; the
training packages must not import this package (``tests/evaluation/test_suite_isolation.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ...spatial.grid import sample
from .deformations import DEFORMATION_FAMILIES, TrueMap, make_deformation
from .grids import GRID_FAMILIES, Grid, moving_grid, world_to_voxel
from .intensity import INTENSITY_FAMILIES, apply_map, bias_field_world, draw_intensity
from .phantoms import ANATOMY_FAMILIES, make_anatomy

__all__ = [
    "SUITE_SEED",
    "HELD_OUT",
    "DEFORMATIONS",
    "INTENSITIES",
    "GRIDS",
    "ANATOMIES",
    "DEFAULT_PAIRS",
    "CaseSpec",
    "case_list",
    "build_case",
    "write_case",
]

SUITE_SEED = 20261126  # frozen: changing it changes every pair
HELD_OUT = frozenset({"bspline", "radial", "piecewise", "ct"})  # never drawn by training code
DEFORMATIONS = DEFORMATION_FAMILIES
INTENSITIES = INTENSITY_FAMILIES
GRIDS = GRID_FAMILIES
ANATOMIES = ANATOMY_FAMILIES
DEFAULT_PAIRS = {2: 5, 3: 2}  # per deformation family: ~40 min with all methods on a 2-core machine
_CHUNK = 1_500_000


@dataclass(frozen=True)
class CaseSpec:
    ndim: int
    index: int  # position within its deformation family
    deformation: str
    intensity: str
    grid: str
    anatomy: str
    tiny: bool = False

    @property
    def name(self) -> str:
        return f"{self.ndim}d_{self.deformation}_{self.index:02d}_{self.anatomy}_{self.intensity}_{self.grid}" + (
            "_tiny" if self.tiny else ""
        )

    @property
    def families(self) -> tuple[str, str, str, str]:
        return self.deformation, self.intensity, self.grid, self.anatomy

    @property
    def held_out(self) -> bool:
        return bool(HELD_OUT & set(self.families))

    def rng(self, part: int) -> np.random.Generator:
        return np.random.default_rng(
            [SUITE_SEED, self.ndim, DEFORMATIONS.index(self.deformation), self.index, part, int(self.tiny)]
        )


def case_list(dims=(2, 3), pairs: dict | int | None = None, families=None, tiny: bool = False) -> list[CaseSpec]:
    """The frozen list: for each dim and deformation family, ``pairs`` cases with cycled intensity, grid and
    anatomy families.  ``families`` (names of any kind) keeps the cases whose every kind that is named in
    ``families`` matches one of the names (AND across kinds, OR within a kind)."""
    if pairs is None:
        pairs = DEFAULT_PAIRS
    if isinstance(pairs, int):
        pairs = {2: pairs, 3: pairs}
    out = []
    for nd in dims:
        for di, d in enumerate(DEFORMATIONS):
            for i in range(int(pairs.get(nd, 0))):
                out.append(
                    CaseSpec(
                        nd,
                        i,
                        d,
                        INTENSITIES[(2 * di + i) % len(INTENSITIES)],
                        GRIDS[(di + i) % len(GRIDS)],
                        ANATOMIES[(2 * di + i) % len(ANATOMIES)],
                        tiny,
                    )
                )
    if families:
        fam = set(families)
        unknown = fam - set(DEFORMATIONS) - set(INTENSITIES) - set(GRIDS) - set(ANATOMIES)
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}")
        kinds = [set(DEFORMATIONS), set(INTENSITIES), set(GRIDS), set(ANATOMIES)]
        out = [c for c in out if all(not (fam & k) or f in fam for f, k in zip(c.families, kinds, strict=False))]
    return out


def _sample_world(arr: np.ndarray, affine: np.ndarray, points: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``arr`` (on ``affine``) at world points ``(N, nd)``; 0 outside."""
    nd = arr.ndim
    vox = torch.from_numpy(world_to_voxel(points, affine).T.astype(np.float32)).reshape(1, nd, -1, *([1] * (nd - 1)))
    img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return sample(img, vox, mode=mode)[0, 0].reshape(-1).numpy()


def _render_moving(
    fixed_img, fixed_lab, f_aff, tmap: TrueMap, grid: Grid, knots
) -> tuple[np.ndarray, np.ndarray, float]:
    """Moving image and labels on ``grid``: each moving voxel at world ``y`` shows the (intensity-mapped)
    fixed image at ``T^{-1}(y)``, averaged over the voxel's extent when the voxel is thicker than the
    fixed one (partial volume of thick slices); labels are taken at the voxel centre."""
    nd = grid.ndim
    f_sp = np.linalg.norm(f_aff[:nd, :nd], axis=0)
    sub = [max(1, int(round(s / fs))) for s, fs in zip(grid.spacing, f_sp, strict=False)]
    offs = np.stack(np.meshgrid(*[(np.arange(k) + 0.5) / k - 0.5 for k in sub], indexing="ij"), -1).reshape(-1, nd)
    lin = grid.affine[:nd, :nd]
    img = np.zeros(int(np.prod(grid.shape)), np.float32)
    lab = np.zeros(int(np.prod(grid.shape)), np.uint8)
    rows = max(1, _CHUNK // max(1, int(np.prod(grid.shape[1:])) * len(offs)))
    worst = 0.0
    for r0 in range(0, grid.shape[0], rows):
        sl = slice(r0, min(grid.shape[0], r0 + rows))
        pts = grid.points(sl)
        n0 = r0 * int(np.prod(grid.shape[1:]))
        acc = np.zeros(len(pts), np.float32)
        xc = None
        for o in offs:
            x = tmap.inverse(pts + lin @ o)
            worst = max(worst, tmap.last_inverse_residual_mm)
            acc += apply_map(_sample_world(fixed_img, f_aff, x), knots)
            if not np.any(o):
                xc = x  # the voxel centre: reused for the labels
        acc /= len(offs)
        if xc is None:
            xc = tmap.inverse(pts)
        lab[n0 : n0 + len(pts)] = np.rint(_sample_world(fixed_lab.astype(np.float32), f_aff, xc, "nearest")).astype(
            np.uint8
        )
        img[n0 : n0 + len(pts)] = acc
    return img.reshape(grid.shape), lab.reshape(grid.shape), worst


def build_case(spec: CaseSpec, anatomy: dict | None = None, deformation: tuple | None = None) -> dict:
    """Synthesise one pair in memory (``anatomy``: a fixed image given as :func:`make_anatomy` returns one,
    e.g. a real scan, instead of the spec's anatomy family; ``deformation``: ``(TrueMap, description)``
    instead of one drawn for the spec's deformation family, e.g. a rigid map; the moving grid is then
    centred on where it sends the fixed field of view's centre, as for the affine family).

    Returns ``{"spec", "fixed": (img, affine), "moving": (img, affine), "fixed_labels", "moving_labels",
    "mask" (fixed grid, bool: inside the object), "true_warp_mm" (nd, *S_fixed) RAS mm fixed->moving,
    "true_map" (:class:`TrueMap`), "meta"}``.
    """
    nd = spec.ndim
    anat = anatomy if anatomy is not None else make_anatomy(spec.anatomy, nd, spec.rng(0), tiny=spec.tiny)
    f_img, f_lab, f_aff = anat["image"], anat["labels"], anat["affine"]
    fixed = Grid(tuple(f_img.shape), f_aff)
    if deformation is None:
        tmap, dinfo = make_deformation(spec.deformation, fixed, spec.rng(1), centres=anat["centres"])
    else:
        tmap, dinfo = deformation
    knots, iinfo = draw_intensity(spec.intensity, spec.rng(2))
    moved_far = spec.deformation == "affine" or deformation is not None
    centre = tmap.forward(fixed.centre_world()[None])[0] if moved_far else None
    m_grid, ginfo = moving_grid(fixed, spec.grid, spec.rng(3), centre=centre)
    m_img, m_lab, resid = _render_moving(f_img, f_lab, f_aff, tmap, m_grid, knots)
    rng = spec.rng(4)
    bias = float(rng.uniform(0.1, 0.3))
    noise = float(rng.uniform(0.01, 0.04))
    pts = m_grid.points()
    m_img = m_img * bias_field_world(pts, rng, bias).reshape(m_grid.shape)
    m_img = np.clip(m_img + noise * rng.standard_normal(m_img.shape).astype(np.float32), 0, None).astype(np.float32)
    true = tmap.displacement_on(fixed)
    meta = {
        "name": spec.name,
        "spec": asdict(spec),
        "held_out": spec.held_out,
        "suite_seed": SUITE_SEED,
        **anat["desc"],
        **dinfo,
        **iinfo,
        **ginfo,
        "bias_strength": round(bias, 3),
        "noise_sigma": round(noise, 4),
        "fixed_shape": list(fixed.shape),
        "moving_shape": list(m_grid.shape),
        "inverse_residual_mm": resid,
    }
    return {
        "spec": spec,
        "fixed": (f_img.astype(np.float32), f_aff),
        "moving": (m_img, m_grid.affine),
        "fixed_labels": (f_lab.astype(np.uint8), f_aff),
        "moving_labels": (m_lab, m_grid.affine),
        "mask": f_lab > 0,
        "true_warp_mm": true,
        "true_map": tmap,
        "meta": meta,
    }


def write_case(case: dict, out_dir) -> dict[str, Path]:
    """Write a pair as NIfTI files (+ meta.json): fixed, moving, fixed_labels, moving_labels, true_warp."""
    from ...io.image import write_image
    from ...io.warp import write_displacement_field

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels", "true_warp")}
    for k in ("fixed", "moving"):
        write_image(paths[k], case[k][0], case[k][1], dtype=np.float32)
    for k in ("fixed_labels", "moving_labels"):
        write_image(paths[k], case[k][0], case[k][1], dtype=np.uint8)
    write_displacement_field(paths["true_warp"], case["true_warp_mm"], case["fixed"][1])
    (out / "meta.json").write_text(json.dumps(case["meta"], indent=1, default=float))
    return paths
