"""Public Python API: :func:`register`, :func:`apply`, :func:`apply_points`, :func:`load_model`."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from .errors import UniRegError
from .io.image import Image, PendingReads, read_image
from .io.slices import PlanePair, field_to_plane, in_fixed_plane, layout_of, matrix_out, matrix_to_plane, to_plane
from .io.warp import read_displacement_field
from .models.registrar import Registrar, default_model_path, load_registrar
from .pipeline import RegistrationResult, register_images
from .resample import nearest_labels, onto_grid, warp_labels
from .spatial.frames import affine_nd, world_to_voxel
from .spatial.world import field_on_grid, pull, warp_points
from .stages.state import check_transform

__all__ = ["register", "apply", "apply_points", "load_model", "RegistrationResult", "as_image", "as_images"]

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
        flat = to_plane(arr, aff)
        if flat is not None:  # one slice of a volume, not in the x-y plane: as read_image reads such a file
            return Image(flat[0][None], flat[1], None, {"slice_layout": flat[2]})
        return Image(arr[None], aff, None)
    raise UniRegError(f"{name}: expected a path, an Image or (array, affine), got {type(x).__name__}")


def as_images(*items: tuple[ImageLike | None, bool, str]) -> list[Image | None]:
    """:func:`as_image` of several ``(x, labels, name)`` at once (None stays None): files are read side
    by side in threads (:class:`unireg.io.image.PendingReads`), so reading a pair and its label map
    costs about the largest file's time.  The first failure, in argument order, is raised."""
    paths = [i for i, (x, _, _) in enumerate(items) if isinstance(x, (str, os.PathLike))]
    if len(paths) < 2:
        return [None if x is None else as_image(x, labels=lab, name=name) for x, lab, name in items]
    pending = PendingReads([(x if i in paths else None, lab) for i, (x, lab, _) in enumerate(items)])
    done = pending.outcomes()
    out: list[Image | None] = []
    for i, (x, lab, name) in enumerate(items):  # the first failure in argument order, file or not
        img, err = done[i]
        if i not in paths and x is not None:
            img = as_image(x, labels=lab, name=name)
        if err is not None:
            raise err
        out.append(img)
    return out


def _as_mask(mask: ImageLike | None, image: Image, name: str) -> Image | None:
    """A mask (nonzero = use), or None; one on a grid of its own is resampled onto ``image``'s grid in world
    space (:func:`unireg.resample.onto_grid`)."""
    if mask is None:
        return None
    m = in_fixed_plane(image, as_image(mask, labels=True, name=name), name.replace("_", " "))
    return onto_grid(m, image, name.replace("_", " "), "fixed image" if name.startswith("fixed") else "moving image")


def load_model(
    model: str | os.PathLike | Registrar | None = None,
    ndim: int = 3,
    extractor: str | None = None,
    extractor_weights: str | os.PathLike | None = None,
) -> Registrar:
    """Load a registrar.

    ``model``: a :class:`Registrar`, a checkpoint path, or ``None``/``"default"`` for the shipped model
    of that dimensionality.  Where no trained model is shipped (or ``extractor`` asks for one the
    shipped model was not trained on), a randomly initialised UNet on that extractor is returned with
    ``trained=False``; callers then rely on ``refine`` iterations.  ``extractor_weights``: a local
    weights file for the extractor (``imagenet``: a torchvision ResNet-18 state dict; ``local``:
    another pre-trained encoder), given to the extractor as ``weights=``.
    """
    if isinstance(model, Registrar):
        return model
    ext_kw = {"weights": str(extractor_weights)} if extractor_weights is not None else None
    if model in (None, "default"):
        path = default_model_path(ndim)
        if path is not None:
            reg = load_registrar(path)
            if extractor is None or extractor == reg.extractor_name:
                if ext_kw is not None:
                    reg = load_registrar(path, extractor_kwargs=ext_kw)
                reg.meta.setdefault("name", f"unireg_{ndim}d (shipped)")
                return reg
        reg = Registrar(ndim, extractor=extractor or "mind", extractor_kwargs=ext_kw, trained=False)
        reg.meta["name"] = f"untrained-{extractor or 'mind'}-{ndim}d"
        return reg
    return load_registrar(model, extractor_kwargs=ext_kw)


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
    denoise: bool = True,
    extractor_weights: str | os.PathLike | None = None,
    fixed_mask: ImageLike | None = None,
    moving_mask: ImageLike | None = None,
    initial_transform: str | os.PathLike | np.ndarray | None = None,
    transform: str = "deformable",
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``.

    Parameters
    ----------
    fixed, moving : path, :class:`Image`, or ``(array, affine4x4)``.  Shapes, spacings, orientations
        and fields of view may differ; dimensionality (2-D/3-D) must match.
    model : checkpoint path, :class:`Registrar`, or None for the shipped default.
    labels : optional label map of the moving image, warped with the same transform: on the moving grid
        or on one of its own (then placed by its own header in world space, as ANTs does).
    fixed_labels : optional label map of the fixed image (on its grid, or on one of its own, resampled
        onto it); Dice before/after goes into the report.
    affine : run the affine pre-alignment first.
    transform : ``"deformable"`` (default: the affine, then the deformation), ``"affine"`` or ``"rigid"``
        (the affine stage alone, a rotation and a translation for ``rigid``; as antsRegistrationSyN.sh's
        ``-t a`` / ``-t r``): the outputs are the same files, the deformable part zero.
    refine : instance-optimisation iterations per refinement level (coarse, working grid, native
        resolution); None: the default schedule; 0: the network alone.
    fast : network, then the coarse and native-resolution refinement levels only (no working-grid level,
        fewer coarse iterations in 3-D: ``unireg.align.refine.FAST_ITERATIONS``).
    do_no_harm : keep a stage (affine, network, deformation) only if it improves the feature
        similarity over its input; report.json's ``stages`` says which were kept and why.
    denoise : smooth an image whose estimated signal-to-noise ratio is low before any stage compares it
        (:mod:`unireg.noise`; report.json's ``noise`` says what was read and done); the outputs warp the
        images as given.
    progress : ``progress(stage_name)`` called as each stage starts.
    smoothness : regularisation weight in [0.1, 10]; larger is smoother.
    device : "cpu" or "cuda".
    qc : compute the failure score without ground truth (``qc_score``/``qc_flag`` in the report).
    progress : optional callable ``progress(stage: str)``, called as each stage starts.
    extractor_weights : local weights file for the extractor (``imagenet``: ResNet-18 state dict).
    fixed_mask, moving_mask : optional masks (nonzero = use) of the fixed / moving image (on its grid, or
        on one of their own, resampled onto it in world space): the similarity is measured only there
        (affine, refinement, failure score); images are not zeroed.
    initial_transform : 4x4 RAS fixed-world -> moving-world matrix, or an ITK/ANTs affine file
        (``.mat``/``.txt``, fixed->moving as ANTs stores it): the affine stage starts from it, and
        with ``affine=False`` it is the affine.

    Returns
    -------
    RegistrationResult with the warped image, the warp fields (RAS mm), the Jacobian and a report.
    """
    fixed_img, moving_img, lab, flab = as_images(
        (fixed, False, "fixed"), (moving, False, "moving"), (labels, True, "labels"),
        (fixed_labels, True, "fixed_labels"),
    )
    assert fixed_img is not None and moving_img is not None  # given (not None), hence read
    # 2-D images read in a slice's own plane frame (unireg.io.slices): all of them in the fixed slice's
    moving_img = in_fixed_plane(fixed_img, moving_img)
    lab = None if lab is None else in_fixed_plane(fixed_img, lab, "label map")
    flab = None if flab is None else in_fixed_plane(fixed_img, flab, "fixed label map")
    if flab is not None:  # Dice is counted on the fixed grid
        flab = onto_grid(flab, fixed_img, "fixed label map", "fixed image")
    if not 0.1 <= float(smoothness) <= 10.0:
        raise UniRegError(f"smoothness must be within [0.1, 10], got {smoothness}")
    if refine is not None and int(refine) < 0:
        raise UniRegError(f"refine must be >= 0 iterations, got {refine}")
    check_transform(transform, affine)
    check_device(device)
    fmask = _as_mask(fixed_mask, fixed_img, "fixed_mask")
    mmask = _as_mask(moving_mask, moving_img, "moving_mask")
    init = None
    if initial_transform is not None:
        if isinstance(initial_transform, (str, os.PathLike)):
            from .io.transform import read_affine

            init = read_affine(initial_transform)
        else:
            init = np.asarray(initial_transform, dtype=np.float64)
            if init.shape != (4, 4) or not np.all(np.isfinite(init)):
                raise UniRegError(f"initial_transform must be a finite 4x4 matrix, got shape {init.shape}")
        plane = layout_of(fixed_img)
        if plane is not None:  # a world transform, seen in the slices' plane frame
            init = matrix_to_plane(init, plane)
    reg = load_model(model, ndim=fixed_img.ndim, extractor=extractor, extractor_weights=extractor_weights)
    result = register_images(
        fixed_img,
        moving_img,
        reg,
        affine=affine,
        refine=None if refine is None else int(refine),
        fast=fast,
        do_no_harm=do_no_harm,
        denoise=denoise,
        progress=progress,
        smoothness=smoothness,
        device=device,
        moving_labels=lab,
        fixed_labels=flab,
        seed=seed,
        qc_score=qc,
        model_name=reg.meta.get("name") or ("in-memory registrar" if isinstance(model, Registrar) else str(model)),
        fixed_mask=fmask,
        moving_mask=mmask,
        initial_transform=init,
        transform=transform,
    )
    from .verdict import judge

    lay, planes = layout_of(fixed_img), PlanePair.of(fixed_img, moving_img)
    if lay is not None and planes is not None:  # single slices: the report's affine in world coordinates
        result.report["affine_matrix"] = matrix_out(affine_nd(result.affine_matrix, 2), lay, planes).tolist()
        result.report["slice_plane"] = {
            "normal": [round(float(v), 6) for v in lay.rotation[2]],
            "across_mm": round(planes.at_centre(fixed_img), 4),
            "tilt_deg": round(planes.tilt_deg(), 3),
            "note": "registered in 2-D in the fixed slice's plane; outputs written in the files' layouts",
        }
    # failed or not, said in the report (and by the CLI's exit status 3), not only in a score
    result.report["verdict"] = judge(result.report, result.warped.data)
    return result


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or a UniRegError saying why it cannot be used."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UniRegError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UniRegError("--device cuda asked for, but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise UniRegError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    return dev


def apply(
    warp: str | os.PathLike | tuple | list,
    image: ImageLike,
    ref: ImageLike,
    *,
    labels: bool = False,
    interpolation: str | None = None,
    device: str = "cpu",
) -> Image:
    """Apply a saved warp (ITK displacement field, as written by ``register``) to ``image``.

    The result lives on ``ref``'s grid: each reference voxel at world ``x`` takes the value of
    ``image`` at ``x + u(x)``, with ``u`` read from the warp (linearly interpolated when the warp's
    grid differs from ``ref``'s).  ``labels=True`` keeps integer labels (label-wise interpolation).

    ``warp`` may also be a *list* of transforms in ``antsApplyTransforms -t`` order (field files,
    affine ``.mat``/``.txt`` files, 4x4 matrices, ``(item, invert)`` pairs or ANTs' ``"[file,1]"``),
    e.g. ``["deformable_warp.nii.gz", "affine.mat"]``; see :mod:`unireg.transforms`.
    ``interpolation``: ``linear`` (default for images), ``bspline`` (cubic), ``nearest`` or
    ``labelwise`` (default with ``labels=True``).  ``device``: where the interpolation runs (``cuda``
    for large volumes; ``bspline`` runs on the CPU, through scipy, whatever the device).
    """
    from .interpolation import check_interpolation, reads_labels
    from .transforms import chain_map, in_plane, load_chain

    dev = check_device(device)
    interp = check_interpolation(interpolation, labels)
    if isinstance(warp, list):
        chain = load_chain(warp)
        img = as_image(image, labels=reads_labels(True, labels, interp), name="image")
        ref_img = as_image(ref, name="ref")
        nd = ref_img.ndim
        if img.ndim != nd:
            raise UniRegError(f"dimensionality mismatch: image {img.ndim}-D, reference {nd}-D", img.path)
        img = in_fixed_plane(ref_img, img, "image")
        plane = layout_of(ref_img)
        if plane is not None:  # a single slice: the chain seen in its plane's frame
            chain = in_plane(chain, plane)
        world_map = chain_map(chain, nd)
        return _resample(img, ref_img, world_map, interp, dev)

    if isinstance(warp, tuple):
        disp, w_aff = warp
    else:
        disp, w_aff = read_displacement_field(warp)
    img = as_image(image, labels=reads_labels(False, labels, interp), name="image")
    ref_img = as_image(ref, name="ref")
    nd = ref_img.ndim
    img = in_fixed_plane(ref_img, img, "image")
    if layout_of(ref_img) is not None:  # a single slice: its 3-D warp (one voxel thick) as its plane's 2-D one
        flat = field_to_plane(disp, w_aff)
        if flat is not None:
            disp, w_aff = flat
    if img.ndim != nd or disp.shape[0] != nd:
        raise UniRegError(
            f"dimensionality mismatch: warp {disp.shape[0]}-D, image {img.ndim}-D, reference {nd}-D",
            getattr(img, "path", None),
        )
    field = field_on_grid(disp, w_aff, ref_img.spatial_shape, ref_img.affine)

    def field_map(world, rows):
        return world + field[(slice(None), rows)].to(device=world.device, dtype=world.dtype)

    return _resample(img, ref_img, field_map, interp, dev)


def _resample(img: Image, ref_img: Image, world_map, interp: str, device: torch.device) -> Image:
    """``img`` onto ``ref_img``'s grid through ``world_map`` with one interpolation method."""
    from .transforms import pull_bspline

    shape, aff = ref_img.spatial_shape, ref_img.affine
    if interp == "labelwise":
        out = warp_labels(img.data[0], img.affine, shape, aff, world_map, device=device)[None]
    elif interp == "bspline":
        out = pull_bspline(img.data[0], img.affine, shape, aff, world_map)[None]
    elif interp == "nearest" and img.data.dtype.kind in "iu":  # label values exact, whatever their size
        out = np.stack([nearest_labels(c, img.affine, shape, aff, world_map, device=device) for c in img.data])
    else:
        data = torch.from_numpy(np.ascontiguousarray(img.data, dtype=np.float32)).to(device)
        out = (
            pull(
                data, img.affine, shape, aff, world_map=world_map, mode="nearest" if interp == "nearest" else "bilinear"
            )
            .cpu()
            .numpy()
        )
    lay = layout_of(ref_img)
    # a single slice's layout kept: written back as its file lies
    return Image(out, aff.copy(), None, {} if lay is None else {"slice_layout": lay})


def apply_points(warp: str | os.PathLike | tuple, points_world: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Map world points ``(N, ndim)`` (RAS mm) through a warp: ``x + u(x)``.

    With ``warp.nii.gz`` (on the fixed grid) this maps fixed-space points to the moving image;
    with ``inverse_warp.nii.gz`` it maps moving-space points (e.g. landmarks) onto the fixed image.
    Points outside the field's grid (beyond half a voxel from its edge voxels) get ``u = 0`` and stay
    where they are, as ITK's ``DisplacementFieldTransform`` (SimpleITK, ANTs) does; a
    :class:`PointsOutsideWarning` says how many.  ``device``: where the field is interpolated.
    """
    dev = check_device(device)
    if isinstance(warp, tuple):
        disp, w_aff = warp
    else:
        disp, w_aff = read_displacement_field(warp)
    pts = np.asarray(points_world, dtype=np.float64)
    nd = disp.shape[0]
    if pts.ndim != 2 or pts.shape[1] != nd:
        raise UniRegError(f"points must be (N, {nd}) for a {nd}-D warp, got {pts.shape}")
    mapped = warp_points(disp, w_aff, pts, device=dev)
    vox = world_to_voxel(pts, w_aff)
    # ITK's buffer test for linear interpolation: continuous index within [-0.5, n - 0.5] on every axis
    size = np.asarray(disp.shape[1:], dtype=np.float64)
    inside = np.all((vox >= -0.5) & (vox <= size - 0.5), axis=1)
    mapped[~inside] = pts[~inside]
    if not inside.all():
        import warnings

        warnings.warn(
            PointsOutsideWarning(
                f"{int((~inside).sum())} of {len(pts)} points lie outside the warp's grid and are left where they "
                "are (zero displacement, as ITK/SimpleITK/ANTs do)"
            ),
            stacklevel=2,
        )
    return mapped


class PointsOutsideWarning(UserWarning):
    """Some points fell outside a displacement field's grid (they were left in place)."""
