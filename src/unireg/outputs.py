"""Writing a :class:`RegistrationResult` to a folder: every file atomic, inputs never overwritten."""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .errors import UniRegError
from .io.atomic import atomic_path, check_output_dir
from .io.image import write_image
from .io.slices import PlanePair, as_file, field_as_file, layout_of, matrix_out
from .io.warp import write_displacement_field
from .spatial.frames import affine_nd

__all__ = ["save_result", "guard_inputs", "write_json", "OUTPUT_NAMES", "OUTPUT_GROUPS", "parse_outputs"]

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "warp": "warp.nii.gz",
    "inverse_warp": "inverse_warp.nii.gz",
    "affine": "affine.mat",
    "deformable_warp": "deformable_warp.nii.gz",
    "deformable_inverse_warp": "deformable_inverse_warp.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "report": "report.json",
    "qc": "qc.png",
    "html": "report.html",
}
# what `--outputs` names (report.json is always written): group -> keys of OUTPUT_NAMES
OUTPUT_GROUPS = {
    "warped": ("warped",),
    "warp": ("warp",),
    "inverse": ("inverse_warp",),
    "ants": ("affine", "deformable_warp", "deformable_inverse_warp"),
    "jacobian": ("jacobian",),
    "labels": ("warped_labels",),
    "qc": ("qc",),
    "html": ("html",),
}


def parse_outputs(spec) -> set[str] | None:
    """``--outputs`` (a comma list of :data:`OUTPUT_GROUPS` names, or ``all``) -> output keys; None = all."""
    if spec is None:
        return None
    names = [n.strip().lower() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names or "all" in names:
        return None
    unknown = sorted(set(names) - set(OUTPUT_GROUPS))
    if unknown:
        raise UniRegError(f"unknown output(s) {', '.join(unknown)}; choose from all, {', '.join(OUTPUT_GROUPS)}")
    return {"report"} | {k for n in names for k in OUTPUT_GROUPS[n]}


# images (not the warps: ITK/ANTs displacement fields stay NIfTI) follow the input's format
IMAGE_OUTPUTS = ("warped", "jacobian", "warped_labels")
FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "mha": ".mha", "nrrd": ".nrrd"}
_FROM_INPUT = {
    ".nii.gz": ".nii.gz",
    ".nii": ".nii.gz",
    ".mha": ".mha",
    ".mhd": ".mha",
    ".nrrd": ".nrrd",
    ".nhdr": ".nrrd",
    "nifti": ".nii.gz",
    "mha": ".mha",
    "mhd": ".mha",
    "nrrd": ".nrrd",
    "nhdr": ".nrrd",
}


def image_suffix(fmt: str | None, fixed=None) -> str:
    """Suffix of the image outputs: ``fmt`` (``nii.gz``, ``nii``, ``mha``, ``nrrd``) or, when None, the
    fixed image's format (a path or an Image; DICOM, PNG and in-memory arrays give ``.nii.gz``)."""
    if fmt is not None:
        key = str(fmt).lower().lstrip(".")
        if key not in FORMATS:
            raise UniRegError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return FORMATS[key]
    if fixed is None:
        return ".nii.gz"
    if isinstance(fixed, (str, os.PathLike)):
        from .io.image import image_ext

        return _FROM_INPUT.get(image_ext(fixed), ".nii.gz")
    return _FROM_INPUT.get(str(getattr(fixed, "meta", {}).get("format", "")), ".nii.gz")


def output_names(fmt: str | None = None, fixed=None) -> dict[str, str]:
    """File name of every output, images with :func:`image_suffix`."""
    suf = image_suffix(fmt, fixed)
    names = dict(OUTPUT_NAMES)
    for k in IMAGE_OUTPUTS:
        names[k] = names[k].removesuffix(".nii.gz") + suf
    return names


def guard_inputs(paths: dict[str, Path], inputs: list[str | None]) -> None:
    """Raise :class:`UniRegError` if any output path is one of the ``inputs`` (same real path)."""
    ins = {os.path.realpath(p) for p in inputs if p}
    for p in paths.values():
        if os.path.realpath(p) in ins:
            raise UniRegError("output would overwrite an input file; choose another --out folder", p)


def prefetch_report_modules(ndim: int) -> None:
    """Import the qc.png / report.html renderers (matplotlib, PIL: ~1.5 s) in a daemon thread, so that
    the import overlaps the registration (whose sampling leaves a core idle) instead of following it.
    Not with one torch thread (``--threads 1``: one core), and for a 3-D registration only: a 2-D one
    lasts ~1 s of mostly small ops, each waiting for the interpreter lock the importing thread holds
    (a 2-D suite pair at two threads: registration 2.1 s with the import beside it, 0.9 s without)."""
    if ndim != 3 or torch.get_num_threads() < 2:
        return

    def load() -> None:
        try:
            from .reports import html, qc  # noqa: F401
        except Exception:  # noqa: BLE001 (save() imports them again and reports any error itself)
            pass

    threading.Thread(target=load, name="unireg-prefetch", daemon=True).start()


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=float) + "\n")


def save_result(
    result, out_dir: str | Path, qc: bool = True, html: bool = True, fmt: str | None = None, outputs=None
) -> dict[str, Path]:
    """Write warped image, warps, affine.mat, Jacobian, labels, report.json, qc.png and report.html into ``out_dir``.

    ``fmt``: format of the image outputs (``nii.gz``, ``nii``, ``mha``, ``nrrd``; default: the fixed image's).
    ``outputs``: only these (:func:`parse_outputs`: e.g. ``"warped,warp"``; None: all); what is not
    asked for is not computed either (the inverse warp, the ANTs split).
    """
    names = output_names(fmt, result.fixed)
    out = check_output_dir(out_dir)
    wanted = parse_outputs(outputs)
    paths = {k: out / v for k, v in names.items() if wanted is None or k in wanted}
    if result.warped_labels is None:
        paths.pop("warped_labels", None)
    if not qc:
        paths.pop("qc", None)
    if not html:
        paths.pop("html", None)
    guard_inputs(
        paths, [result.fixed.path, result.moving.path, result.report.get("labels"), result.report.get("fixed_labels")]
    )
    # a failure half-way (disk full, QC rendering) must not leave a partial set of outputs behind
    existed = {k for k, p in paths.items() if p.exists()}
    try:
        _write_all(result, out, paths, "qc" in paths, "html" in paths)
    except BaseException:
        for k, p in paths.items():
            if k not in existed:
                p.unlink(missing_ok=True)
        raise
    return paths


# image and field files are compressed by parallel writers (ISA-L and numpy release the GIL) while the
# main thread renders qc.png and report.html (1 mm MNI pair, 2 cores: 9.0 s -> 4.7 s); with one torch
# thread (``--threads 1``) everything is written in line, on the one core the user gave us
WRITERS = 2
MAX_WRITERS = 6  # warped, warp, inverse warp, Jacobian, labels, ANTs split


class _InLine:
    """An executor that runs each job when it is submitted (the one-thread case)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 (handed to the caller like a worker's error)
            f.set_exception(e)
        return f


def _writers():
    threads = torch.get_num_threads()
    if threads < 2:
        return _InLine()
    # compression (ISA-L) and copies release the GIL: a many-core machine writes the big files side by side
    return ThreadPoolExecutor(max_workers=min(max(WRITERS, threads), MAX_WRITERS), thread_name_prefix="unireg-write")


def _write_all(result, out: Path, paths: dict[str, Path], qc: bool, html: bool) -> None:
    fixed = result.fixed
    moving = result.moving
    # a single slice read in its plane's frame is written back as its file lies (unireg.io.slices): images
    # with their one-voxel axis, fields as 3-D fields that also cross from one slice's plane to the other's
    planes = PlanePair.of(fixed, moving)
    jobs: dict[str, Future] = {}
    with _writers() as pool:
        # the longest jobs first (each computes a whole-volume field, then compresses it): the last
        # to start sets when the folder is complete
        if "inverse_warp" in paths:  # computed by its writer (a whole-volume pass); the ANTs split may copy its file
            jobs["inverse_warp"] = pool.submit(
                lambda: write_displacement_field(
                    paths["inverse_warp"],
                    *field_as_file(
                        moving,
                        result.inverse_warp_mm,
                        0.0 if planes is None else planes.inverse(moving, result.inverse_warp_mm),
                    ),
                )
            )
        if "warp" in paths:
            gap = 0.0 if planes is None else planes.forward(fixed, result.warp_mm)
            jobs["warp"] = pool.submit(
                write_displacement_field, paths["warp"], *field_as_file(fixed, result.warp_mm, gap)
            )
        if "affine" in paths:  # the ANTs split: its two fields are independent jobs
            jobs.update(_submit_ants_split(pool, result, paths, jobs.get("warp"), jobs.get("inverse_warp")))
        if "warped" in paths:
            jobs["warped"] = pool.submit(
                write_image, paths["warped"], *as_file(fixed, result.warped.data), dtype=np.float32
            )
        if "jacobian" in paths:
            jobs["jacobian"] = pool.submit(
                write_image, paths["jacobian"], *as_file(fixed, result.jacobian.astype(np.float32)), dtype=np.float32
            )
        if "warped_labels" in paths:
            jobs["warped_labels"] = pool.submit(
                write_image, paths["warped_labels"], *as_file(fixed, result.warped_labels.data)
            )
        try:
            report = dict(result.report)
            report["outputs"] = {k: v.name for k, v in paths.items()}  # what this folder holds
            write_json(paths["report"], report)
            _write_reports(result, out, paths, qc, html)  # (report.html reads report.json)
        finally:
            errors = [f.exception() for f in jobs.values()]  # waits for every writer
        for exc in errors:
            if exc is not None:
                raise exc


def _write_reports(result, out: Path, paths: dict[str, Path], qc: bool, html: bool) -> None:
    fixed, moving = result.fixed, result.moving
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

        build_report(
            out,
            preloaded={
                "fixed": fixed,
                "moving": moving,
                "warped": result.warped,
                "warp": (result.warp_mm, fixed.affine),
                "jacobian": result.jacobian,
                "before": result.before_image(),  # the array qc.png shows, computed once
            },
        )


def _copy_written(src: Future, src_path: Path, dst: Path) -> None:
    """``dst`` as a byte copy of the file another writer is producing (after it has finished)."""
    src.result()
    with atomic_path(dst) as tmp:
        shutil.copyfile(src_path, tmp)


def _same_grid(a, b) -> bool:
    return tuple(a.spatial_shape) == tuple(b.spatial_shape) and np.allclose(a.affine, b.affine, rtol=0, atol=1e-9)


def deformable_forward_mm(result) -> np.ndarray:
    """``D(x) - x`` on the fixed grid (RAS mm), from the whole map's field ``warp_mm = T(D(x)) - x``:
    ``D(x) = T^-1(x + warp_mm(x))``.  With ``T^-1 y = L y + b`` and ``x = A v + a`` (voxel ``v``) that is
    ``L warp_mm(x) + (L - I)(A v + a) + b``: one 3x3 product per voxel plus a field that is affine in
    ``v``, added as one broadcast ramp per axis (no per-voxel coordinates, no resampling; the small
    matrices in float64, the fields in float32)."""
    fixed = result.fixed
    nd = fixed.ndim
    t_inv = np.linalg.inv(affine_nd(np.asarray(result.affine_matrix, dtype=np.float64), nd))
    a = affine_nd(np.asarray(fixed.affine, dtype=np.float64), nd)
    lin = t_inv[:nd, :nd]
    ramp = (lin - np.eye(nd)) @ a[:nd, :nd]  # per voxel index, per output component
    offset = (lin - np.eye(nd)) @ a[:nd, nd] + t_inv[:nd, nd]
    warp = torch.from_numpy(np.ascontiguousarray(result.warp_mm, dtype=np.float32))
    shape = tuple(fixed.spatial_shape)
    out = np.empty(warp.shape, dtype=np.float32)
    res = torch.from_numpy(out)
    axes = [torch.arange(n, dtype=torch.float32).reshape([-1 if k == j else 1 for k in range(nd)])
            for j, n in enumerate(shape)]
    lin32 = torch.as_tensor(lin, dtype=torch.float32)
    torch.matmul(lin32, warp.reshape(nd, -1), out=res.reshape(nd, -1))
    for i in range(nd):
        res[i] += sum(float(ramp[i, j]) * axes[j] for j in range(nd)) + float(offset[i])
    return out


def _submit_ants_split(
    pool, result, paths: dict[str, Path], warp_job: Future | None = None, inverse_job: Future | None = None
) -> dict[str, Future]:
    """``affine.mat`` (written here) + ``deformable_warp.nii.gz`` and ``deformable_inverse_warp.nii.gz``
    (a job each on ``pool``): the ANTs/elastix way of storing a result.

    With ``T`` the affine (fixed world -> moving world) and ``D(x) = x + d(x)`` the deformable part
    on the fixed grid, the whole map is ``T(D(x))``, i.e. the ANTs chain
    ``-t deformable_warp.nii.gz -t affine.mat`` (``transformlist=[deformable_warp, affine]``).  The
    inverse, moving -> fixed, is ``D^-1(T^-1(y))``: ``-t [affine.mat,1] -t deformable_inverse_warp.nii.gz``.
    Both deformable fields live on the fixed grid, as antsRegistration's ``1Warp``/``1InverseWarp`` do.
    With an identity affine the deformable part is the whole map: its files are copies of the jobs
    ``warp_job`` / ``inverse_job`` write (submitted earlier to the same pool, so already started).
    """
    from .io.transform import write_affine

    fixed, mapping = result.fixed, result.mapping
    lay, planes = layout_of(fixed), PlanePair.of(fixed, result.moving)
    if lay is None:
        write_affine(paths["affine"], result.affine_matrix, ndim=fixed.ndim)
    else:  # a single slice: the 3-D transform of its file (unireg.io.slices), the step between the planes in it
        write_affine(paths["affine"], matrix_out(affine_nd(np.asarray(result.affine_matrix), 2), lay, planes), ndim=3)
    identity = np.array_equal(affine_nd(np.asarray(result.affine_matrix), fixed.ndim), np.eye(fixed.ndim + 1))
    identity = identity and (planes is None or planes.flat)  # else the warp also steps across: not the deformable part
    jobs: dict[str, Future] = {}

    def inverse() -> None:
        inv = mapping.inverse_on_grid(fixed.spatial_shape, fixed.affine, with_affine=False)
        write_displacement_field(paths["deformable_inverse_warp"], *field_as_file(fixed, inv))

    if identity and inverse_job is not None and _same_grid(fixed, result.moving):
        jobs["deformable_inverse_warp"] = pool.submit(
            _copy_written, inverse_job, paths["inverse_warp"], paths["deformable_inverse_warp"]
        )
    else:
        jobs["deformable_inverse_warp"] = pool.submit(inverse)
    if identity and warp_job is not None:
        jobs["deformable_warp"] = pool.submit(_copy_written, warp_job, paths["warp"], paths["deformable_warp"])
    else:
        jobs["deformable_warp"] = pool.submit(
            lambda: write_displacement_field(
                paths["deformable_warp"], *field_as_file(fixed, deformable_forward_mm(result))
            )
        )
    return jobs
