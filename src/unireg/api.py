"""Public Python API: :func:`register`, :func:`apply`, :func:`apply_points`, :func:`load_model`."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from .errors import UniRegError
from .io.image import Image, read_image
from .io.warp import read_displacement_field
from .models.registrar import Registrar, default_model_path, load_registrar
from .pipeline import RegistrationResult, register_images
from .resample import warp_labels
from .spatial.world import field_on_grid, pull, warp_points

__all__ = ["register", "apply", "apply_points", "load_model", "RegistrationResult", "as_image"]

ImageLike = Union[str, os.PathLike, Image, tuple]


def as_image(x: ImageLike, *, labels: bool = False, name: str = "image") -> Image:
    """A path, an :class:`Image`, or ``(array, affine)`` -> :class:`Image` (validated like a file)."""
    if isinstance(x, Image):
        return x
    if isinstance(x, (str, os.PathLike)):
        return read_image(x, labels=labels)
    if isinstance(x, tuple) and len(x) == 2:
        arr, aff = np.asarray(x[0]), np.asarray(x[1], dtype=np.float64)
        if arr.ndim not in (2, 3):
            raise UniRegError(f"{name}: expected a 2-D or 3-D array, got shape {arr.shape}")
        if aff.shape != (4, 4):
            raise UniRegError(f"{name}: affine must be 4x4, got {aff.shape}")
        if not labels:
            if not np.all(np.isfinite(arr)):
                raise UniRegError(f"{name}: array has NaN or Inf voxels")
            if arr.size and arr.min() == arr.max():
                raise UniRegError(f"{name}: array is constant")
            arr = arr.astype(np.float32)
        return Image(arr[None], aff, None)
    raise UniRegError(f"{name}: expected a path, an Image or (array, affine), got {type(x).__name__}")


def load_model(model: str | os.PathLike | Registrar | None = None, ndim: int = 3, extractor: str | None = None) -> Registrar:
    """Load a registrar.

    ``model``: a :class:`Registrar`, a checkpoint path, or ``None``/``"default"`` for the shipped model
    of that dimensionality.  Where no trained model is shipped (or ``extractor`` asks for one the
    shipped model was not trained on), a randomly initialised UNet on that extractor is returned with
    ``trained=False``; callers then rely on ``refine`` iterations.
    """
    if isinstance(model, Registrar):
        return model
    if model in (None, "default"):
        path = default_model_path(ndim)
        if path is not None:
            reg = load_registrar(path)
            if extractor is None or extractor == reg.extractor_name:
                reg.meta.setdefault("name", f"unireg_{ndim}d (shipped)")
                return reg
        reg = Registrar(ndim, extractor=extractor or "mind", trained=False)
        reg.meta["name"] = f"untrained-{extractor or 'mind'}-{ndim}d"
        return reg
    return load_registrar(model)


def register(
    fixed: ImageLike,
    moving: ImageLike,
    *,
    model: str | os.PathLike | Registrar | None = None,
    extractor: str | None = None,
    labels: ImageLike | None = None,
    fixed_labels: ImageLike | None = None,
    affine: bool = True,
    refine: int | None = None,
    smoothness: float = 1.0,
    device: str = "cpu",
    seed: int = 0,
    qc: bool = True,
    fast: bool = False,
    do_no_harm: bool = True,
    progress=None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``.

    Parameters
    ----------
    fixed, moving : path, :class:`Image`, or ``(array, affine4x4)``.  Shapes, spacings, orientations
        and fields of view may differ; dimensionality (2-D/3-D) must match.
    model : checkpoint path, :class:`Registrar`, or None for the shipped default.
    labels : optional label map on the moving grid, warped with the same transform.
    fixed_labels : optional label map on the fixed grid; Dice before/after goes into the report.
    affine : run the affine pre-alignment first.
    refine : instance-optimisation iterations per refinement level (coarse, working grid, native
        resolution); None: the default schedule; 0: the network alone.
    fast : network + coarse refinement only (no working-grid or native-resolution level).
    do_no_harm : keep a stage (affine, network, deformation) only if it improves the feature
        similarity over its input; report.json's ``stages`` says which were kept and why.
    progress : ``progress(stage_name)`` called as each stage starts.
    smoothness : regularisation weight in [0.1, 10]; larger is smoother.
    device : "cpu" or "cuda".
    qc : compute the failure score without ground truth (``qc_score``/``qc_flag`` in the report).

    Returns
    -------
    RegistrationResult with the warped image, the warp fields (RAS mm), the Jacobian and a report.
    """
    fixed_img = as_image(fixed, name="fixed")
    moving_img = as_image(moving, name="moving")
    lab = as_image(labels, labels=True, name="labels") if labels is not None else None
    flab = as_image(fixed_labels, labels=True, name="fixed_labels") if fixed_labels is not None else None
    if flab is not None and flab.spatial_shape != fixed_img.spatial_shape:
        raise UniRegError(
            f"fixed label map shape {flab.spatial_shape} differs from the fixed image {fixed_img.spatial_shape}",
            flab.path,
        )
    if not 0.1 <= float(smoothness) <= 10.0:
        raise UniRegError(f"smoothness must be within [0.1, 10], got {smoothness}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UniRegError("--device cuda asked for, but no CUDA device is available")
    if refine is not None and int(refine) < 0:
        raise UniRegError(f"refine must be >= 0 iterations, got {refine}")
    reg = load_model(model, ndim=fixed_img.ndim, extractor=extractor)
    return register_images(
        fixed_img,
        moving_img,
        reg,
        affine=affine,
        refine=None if refine is None else int(refine),
        fast=fast,
        do_no_harm=do_no_harm,
        progress=progress,
        smoothness=smoothness,
        device=device,
        moving_labels=lab,
        fixed_labels=flab,
        seed=seed,
        qc_score=qc,
        model_name=reg.meta.get("name") or ("in-memory registrar" if isinstance(model, Registrar) else str(model)),
    )


def apply(
    warp: str | os.PathLike | tuple,
    image: ImageLike,
    ref: ImageLike,
    *,
    labels: bool = False,
) -> Image:
    """Apply a saved warp (ITK displacement field, as written by ``register``) to ``image``.

    The result lives on ``ref``'s grid: each reference voxel at world ``x`` takes the value of
    ``image`` at ``x + u(x)``, with ``u`` read from the warp (linearly interpolated when the warp's
    grid differs from ``ref``'s).  ``labels=True`` keeps integer labels (label-wise interpolation).
    """
    if isinstance(warp, tuple):
        disp, w_aff = warp
    else:
        disp, w_aff = read_displacement_field(warp)
    img = as_image(image, labels=labels, name="image")
    ref_img = as_image(ref, name="ref")
    nd = ref_img.ndim
    if img.ndim != nd or disp.shape[0] != nd:
        raise UniRegError(
            f"dimensionality mismatch: warp {disp.shape[0]}-D, image {img.ndim}-D, reference {nd}-D",
            getattr(img, "path", None),
        )
    field = field_on_grid(disp, w_aff, ref_img.spatial_shape, ref_img.affine)

    def world_map(world, rows):
        return world + field[(slice(None), rows)]

    if labels:
        out = warp_labels(img.data[0], img.affine, ref_img.spatial_shape, ref_img.affine, world_map)[None]
    else:
        out = pull(torch.from_numpy(np.ascontiguousarray(img.data, dtype=np.float32)), img.affine,
                   ref_img.spatial_shape, ref_img.affine, world_map=world_map).numpy()
    return Image(out, ref_img.affine.copy(), None)


def apply_points(warp: str | os.PathLike | tuple, points_world: np.ndarray) -> np.ndarray:
    """Map world points ``(N, ndim)`` (RAS mm) through a warp: ``x + u(x)``.

    With ``warp.nii.gz`` (on the fixed grid) this maps fixed-space points to the moving image;
    with ``inverse_warp.nii.gz`` it maps moving-space points (e.g. landmarks) onto the fixed image.
    """
    if isinstance(warp, tuple):
        disp, w_aff = warp
    else:
        disp, w_aff = read_displacement_field(warp)
    pts = np.asarray(points_world, dtype=np.float64)
    nd = disp.shape[0]
    if pts.ndim != 2 or pts.shape[1] != nd:
        raise UniRegError(f"points must be (N, {nd}) for a {nd}-D warp, got {pts.shape}")
    return warp_points(disp, w_aff, pts)
