"""Stages ``qc`` (failure score), ``resample`` (every fixed-grid output in one pass) and ``report``."""

from __future__ import annotations

import platform
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..align.refine import valid_fov
from ..evaluation.metrics import dice
from ..evaluation.qc_score import score_registration
from ..io.image import Image
from ..masks import mask_on_grid
from ..report_schema import REPORT_FORMAT, Report
from ..resample import resample_fixed_grid, warp_labels
from ..spatial.grid import with_caller_threads
from ..spatial.world import embed_nd
from .prepare import fov_covers, moving_fov, moving_mask_on
from .state import State

__all__ = ["qc", "resample", "qc_and_resample", "report", "versions", "FOV_AWARE"]

# The failure score only where the fixed image lands inside the moving field of view (measured: see
# docs/qc.md, "Partial fields of view"); False: the whole fixed foreground, as before session 29.
FOV_AWARE = True


def qc_and_resample(s: State) -> None:
    """:func:`qc` and :func:`resample`: on the CPU with two or more threads, the failure score is
    computed by a worker thread while the main one resamples (the two only read the state, and most
    of each is one-core 3-D sampling); elsewhere one after the other.  Same figures either way."""
    if not s.opts.qc_score or s.device.type != "cpu" or torch.get_num_threads() < 2:
        qc(s)
        resample(s)
        return
    s.announce("qc")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unireg-qc") as pool:
        job = pool.submit(with_caller_threads(lambda: qc(s, announce=False)))
        try:
            resample(s)
        finally:
            exc = job.exception()  # waits for the worker
    if exc is not None:
        raise exc


def qc(s: State, announce: bool = True) -> None:
    if not s.opts.qc_score:
        return
    if announce:
        s.announce("qc")
    with s.timer("qc"), torch.no_grad():  # failure score without ground truth (docs/qc.md)
        feats = (s.ff, s.fm) if s.model.extractor_name == "mind" else ()
        fmask = mmask = None
        if s.opts.fixed_mask is not None:
            fmask = mask_on_grid(s.opts.fixed_mask, s.w_shape, s.w_aff4).to(s.device)
        if s.opts.moving_mask is not None:
            mmask = moving_mask_on(s, s.w_shape, s.w_aff4).to(s.device)
        if FOV_AWARE and not fov_covers(s):
            # a moving image that covers part of the fixed one (a slab, a crop against a whole head):
            # fixed structure the affine leaves beyond its field of view faces no data, neither a match
            # nor a mismatch, so only what the affine brings inside it (with MIND's footprint to spare)
            # is scored.  A fixed-grid mask, not carried through the deformation: a deformation that
            # pushes scored anatomy out of view is still read as mismatch there
            fov = valid_fov(moving_fov(s, s.w_shape, s.w_aff4), s.w_shape)[0, 0] > 0.5
            fmask = fov if fmask is None else fmask.bool() & fov
        s.qc = score_registration(s.fixed_w, s.moving_w, s.disp_w, s.jac_w, *feats, fixed_mask=fmask, moving_mask=mmask)


def resample(s: State) -> None:
    """Warped image, warp (RAS mm), Jacobian and labels on the fixed grid (the inverse warp, on the
    moving grid, is computed only when asked for: ``RegistrationResult.inverse_warp_mm``)."""
    s.announce("resample")
    with s.timer("resample"), torch.no_grad():
        out = resample_fixed_grid(
            s.fixed.spatial_shape,
            s.fixed.affine,
            s.w_aff4,
            s.t_nd,
            s.disp_w,  # on the device: the slabs are resampled there, each slab's results copied back
            s.jac_w,
            s.moving.data,
            s.moving.affine,
            labels=None if s.moving_labels is None else s.moving_labels.data[0],
            labels_affine4=None if s.moving_labels is None else s.moving_labels.affine,
        )
        s.outputs["warp_mm"], s.outputs["jacobian"] = out["warp_mm"], out["jacobian"]
        s.outputs["warped"] = Image(out["warped"], s.fixed.affine.copy(), None)
        s.outputs["warped_labels"] = (
            None if out["labels"] is None else Image(out["labels"][None], s.fixed.affine.copy(), None)
        )


def versions() -> dict:
    """Versions of what produced the result; an optional package that is absent reads ``None``."""
    from .. import __version__

    out: dict[str, str | None] = {
        "unireg": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for dist in ("nibabel", "SimpleITK"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _path(img) -> str | None:
    return str(Path(img.path).resolve()) if img is not None and img.path else None


def report(s: State, t_start: float) -> Report:
    nd = s.nd
    rep: Report = {
        "format_version": REPORT_FORMAT,
        "fixed": _path(s.fixed),
        "moving": _path(s.moving),
        "labels": _path(s.moving_labels),
        "fixed_labels": _path(s.fixed_labels),
        "ndim": nd,
        "extractor": s.model.extractor_name,
        "model": s.opts.model_name or ("trained" if s.model.trained else "untrained"),
        "model_trained": bool(s.model.trained),
        "affine": bool(s.opts.affine),
        "transform": s.opts.transform,
        "affine_matrix": embed_nd(s.t_nd, nd).tolist(),
        "refine_iterations": int(sum(lv["iterations"] for lv in s.refine_levels)),
        "refine_levels": list(s.refine_levels),
        "smoothness": float(s.opts.smoothness),
        "working_grid": {"shape": list(s.w_shape), "spacing_mm": float(np.linalg.norm(s.w_aff4[:3, 0]))},
        "native_grid": {"shape": list(s.f_shape), "spacing_mm": float(np.linalg.norm(s.f_aff4[:3, 0]))}
        if any(lv["level"] == "native" for lv in s.refine_levels)
        else None,
        "device": str(s.device),
        "threads": torch.get_num_threads(),
        "seed": s.opts.seed,
        **s.fold,  # type: ignore[typeddict-item]
        **s.qc,  # type: ignore[typeddict-item]
        "stages": dict(s.stages),
        "versions": versions(),
        "runtime_s": {},
    }
    rep["initial_transform"] = s.opts.initial_transform is not None
    if s.noise:
        rep["noise"] = dict(s.noise)
    for key, img in (("fixed_mask", s.opts.fixed_mask), ("moving_mask", s.opts.moving_mask)):
        rep[key] = None if img is None else (_path(img) or "in memory")  # type: ignore[literal-required]
    if not s.model.trained:
        rep["warning"] = "untrained (randomly initialised) UNet: the deformation comes from instance optimisation"
    warped_labels = s.outputs.get("warped_labels")
    if s.fixed_labels is not None and s.moving_labels is not None and warped_labels is not None:
        f_lab = s.fixed_labels.data[0]
        before = warp_labels(
            s.moving_labels.data[0], s.moving_labels.affine, s.fixed.spatial_shape, s.fixed.affine, None
        )
        rep["dice"] = {str(k): v for k, v in dice(f_lab, warped_labels.data[0]).items()}
        rep["dice_before"] = {str(k): v for k, v in dice(f_lab, before).items()}
    s.timer.times["total"] = time.perf_counter() - t_start
    rep["runtime_s"] = {k: round(v, 4) for k, v in s.timer.times.items()}
    return rep
