"""Run ONE peer registration (ANTs SyN or elastix B-spline) on two image files, in its own process.

    python benchmarks/held_out_peer.py ants    FIXED MOVING OUT [--metric mattes|cc] [--threads T] [--labels L]
    python benchmarks/held_out_peer.py elastix FIXED MOVING OUT [--threads T]

Writes ``OUT/warp.nii.gz`` (fixed->moving displacement on the fixed grid, ITK layout, LPS mm, the same
file layout as ``unireg register``), for ANTs also ``OUT/inverse_warp.nii.gz`` (moving->fixed on the
moving grid, from ``invtransforms``), ``OUT/warped.nii.gz`` and with ``--labels`` ``OUT/warped_labels.nii.gz``
(nearest neighbour), and ``OUT/report.json`` (registration seconds inside this
process).  The caller measures the whole process (wall seconds, peak RSS).  Never imports torch.

ANTs: ``ants.registration(type_of_transform="SyN", aff_metric="mattes", syn_metric=METRIC)`` with
antspyx's default iterations.  elastix (itk-elastix): default affine then default B-spline parameter
maps, both with ``AdvancedMattesMutualInformation``, B-spline final grid 8 mm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _read_affine(path: Path):
    import nibabel as nib
    import numpy as np

    return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def _write(out: Path, name: str, vec_lps_last, affine) -> None:
    """``(*S, nd)`` LPS displacement -> ITK NIfTI warp (via UniReg's writer: numpy + nibabel only)."""
    import numpy as np

    from unireg.io.warp import write_displacement_field

    v = np.moveaxis(np.asarray(vec_lps_last, np.float32), -1, 0).copy()
    v[:2] *= -1.0  # LPS -> RAS; the writer flips back
    write_displacement_field(out / name, v, affine)


def run_ants(fixed: Path, moving: Path, out: Path, metric: str, labels: Path | None = None) -> dict:
    import ants

    if hasattr(ants, "config") and hasattr(ants.config, "_random_seed"):
        ants.config._random_seed = 1  # MI sampling is random: fix it (passed on as --random-seed)
    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        reg = ants.registration(f, m, type_of_transform="SyN", aff_metric="mattes", syn_metric=metric,
                                outprefix=os.path.join(tmp, "r"))
        secs = time.perf_counter() - t0
        fwd = ants.apply_transforms(f, m, reg["fwdtransforms"], compose=os.path.join(tmp, "fwd"))
        inv = ants.apply_transforms(m, f, reg["invtransforms"], whichtoinvert=[True, False],
                                    compose=os.path.join(tmp, "inv"))
        _write(out, "warp.nii.gz", ants.image_read(fwd).numpy(), _read_affine(fixed))
        _write(out, "inverse_warp.nii.gz", ants.image_read(inv).numpy(), _read_affine(moving))
        ants.image_write(reg["warpedmovout"], str(out / "warped.nii.gz"))
        if labels is not None:  # the moving label map onto the fixed grid (as `unireg register --labels`)
            lab = ants.apply_transforms(f, ants.image_read(str(labels)), reg["fwdtransforms"],
                                        interpolator="nearestNeighbor")
            ants.image_write(lab, str(out / "warped_labels.nii.gz"))
    return {"method": "ants", "type_of_transform": "SyN", "aff_metric": "mattes", "syn_metric": metric,
            "registration_s": round(secs, 3), "ants_version": getattr(ants, "__version__", "?")}


def run_elastix(fixed: Path, moving: Path, out: Path, threads: int, grid_mm: float = 8.0) -> dict:
    import itk
    import numpy as np

    f = itk.imread(str(fixed), itk.F)
    m = itk.imread(str(moving), itk.F)
    po = itk.ParameterObject.New()
    aff_map = po.GetDefaultParameterMap("affine")
    bs_map = po.GetDefaultParameterMap("bspline")
    bs_map["Registration"] = ["MultiResolutionRegistration"]
    bs_map["FinalGridSpacingInPhysicalUnits"] = [str(grid_mm)]
    for pm in (aff_map, bs_map):
        pm["Metric"] = ["AdvancedMattesMutualInformation"]
        pm["WriteResultImage"] = ["false"]
    po.AddParameterMap(aff_map)
    po.AddParameterMap(bs_map)
    t0 = time.perf_counter()
    _, tp = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False, number_of_threads=threads)
    secs = time.perf_counter() - t0
    field = itk.transformix_deformation_field(m, tp)
    arr = itk.array_from_image(field)  # (z, y, x, nd) LPS mm, fixed->moving on the fixed grid
    nd = arr.shape[-1]
    arr = np.transpose(arr, tuple(range(nd - 1, -1, -1)) + (nd,))
    _write(out, "warp.nii.gz", arr, _read_affine(fixed))
    return {"method": "elastix", "maps": "affine + bspline", "metric": "AdvancedMattesMutualInformation",
            "final_grid_mm": grid_mm, "registration_s": round(secs, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=["ants", "elastix"])
    p.add_argument("fixed", type=Path)
    p.add_argument("moving", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--metric", default="mattes", choices=["mattes", "cc", "CC"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--labels", type=Path, default=None, help="ants: moving label map -> OUT/warped_labels.nii.gz")
    a = p.parse_args(argv)
    for f in (a.fixed, a.moving):
        if not f.is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            return 2
    a.out.mkdir(parents=True, exist_ok=True)
    info = run_ants(a.fixed, a.moving, a.out, "CC" if a.metric.lower() == "cc" else "mattes", a.labels) if a.method == "ants" \
        else run_elastix(a.fixed, a.moving, a.out, a.threads)
    info["threads"] = a.threads
    (a.out / "report.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
