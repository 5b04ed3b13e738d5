"""Writing a :class:`RegistrationResult` to a folder: every file atomic, inputs never overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import UniRegError
from .io.atomic import atomic_path, check_output_dir
from .io.image import write_image
from .io.warp import write_displacement_field

__all__ = ["save_result", "guard_inputs", "write_json", "OUTPUT_NAMES"]

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "warp": "warp.nii.gz",
    "inverse_warp": "inverse_warp.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "report": "report.json",
    "qc": "qc.png",
    "html": "report.html",
}


def guard_inputs(paths: dict[str, Path], inputs: list[str | None]) -> None:
    """Raise :class:`UniRegError` if any output path is one of the ``inputs`` (same real path)."""
    ins = {os.path.realpath(p) for p in inputs if p}
    for p in paths.values():
        if os.path.realpath(p) in ins:
            raise UniRegError("output would overwrite an input file; choose another --out folder", p)


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=float) + "\n")


def save_result(result, out_dir: str | Path, qc: bool = True, html: bool = True) -> dict[str, Path]:
    """Write warped image, warps, Jacobian, labels, report.json, qc.png and report.html into ``out_dir``."""
    out = check_output_dir(out_dir)
    paths = {k: out / v for k, v in OUTPUT_NAMES.items()}
    if result.warped_labels is None:
        paths.pop("warped_labels")
    if not qc:
        paths.pop("qc")
    if not html:
        paths.pop("html")
    guard_inputs(paths, [result.fixed.path, result.moving.path, result.report.get("labels"), result.report.get("fixed_labels")])
    # a failure half-way (disk full, QC rendering) must not leave a partial set of outputs behind
    existed = {k for k, p in paths.items() if p.exists()}
    try:
        _write_all(result, out, paths, qc, html)
    except BaseException:
        for k, p in paths.items():
            if k not in existed:
                p.unlink(missing_ok=True)
        raise
    return paths


def _write_all(result, out: Path, paths: dict[str, Path], qc: bool, html: bool) -> None:
    fixed = result.fixed
    moving = result.moving
    write_image(paths["warped"], result.warped.data, fixed.affine, dtype=np.float32)
    write_displacement_field(paths["warp"], result.warp_mm, fixed.affine)
    write_displacement_field(paths["inverse_warp"], result.inverse_warp_mm, moving.affine)
    write_image(paths["jacobian"], result.jacobian.astype(np.float32), fixed.affine, dtype=np.float32)
    if result.warped_labels is not None:
        write_image(paths["warped_labels"], result.warped_labels.data, fixed.affine)
    report = dict(result.report)
    report["outputs"] = {k: v.name for k, v in paths.items()}
    write_json(paths["report"], report)
    if qc:
        # lazy: matplotlib (~0.7 s measured) only when qc.png is asked for (not with --no-qc)
        from .reports.qc import render_qc_png

        render_qc_png(
            paths["qc"],
            fixed.data[0],
            result.before_image(),
            result.warped.data[0],
            result.warp_mm,
            result.jacobian,
            spacing=fixed.spacing,
            affine=fixed.affine,  # warp_mm holds world (RAS) components
            title=f"UniReg: {Path(moving.path).name if moving.path else 'moving'} -> "
            f"{Path(fixed.path).name if fixed.path else 'fixed'}",
        )
    if html:
        from .reports.html import build_report  # lazy, as above (matplotlib, scipy, PIL)

        build_report(out, preloaded={
            "fixed": fixed, "moving": moving, "warped": result.warped,
            "warp": (result.warp_mm, fixed.affine), "jacobian": result.jacobian,
            "before": result.before_image(),  # the array qc.png shows, computed once
        })
