"""The registration pipeline: working grid -> affine -> features -> UNet -> (refine) -> fixed grid.

Mapping conventions.  ``T`` (``affine_matrix``) maps fixed world points to moving world points (RAS
mm).  The deformable part lives on the *working grid* ``W`` (world-axis-aligned, isotropic, covering
the fixed image) as ``disp_vox``.  A fixed world point ``x`` is carried to the moving world point

    y = T W (p + disp_vox(p)),  p = W^-1 x,

and every output is one resampling of the *original* moving image at ``y`` (no double interpolation).
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .align.affine import center_of_mass_init, optimize_affine, pool
from .align.refine import refine_velocity
from .errors import UniRegError
from .io.image import Image
from .masks import mask_on_grid
from .models.registrar import Registrar
from .preprocess import normalize_intensity, to_working_grid
from .spatial.grid import apply_matrix, sample
from .spatial.jacobian import folding_stats, jacobian_determinant
from .resample import resample_fixed_grid
from .spatial.world import affine_nd, embed_nd, pooled_affine, pull, slab_voxels, slabs, working_grid

__all__ = ["RegistrationResult", "register_images", "FixedToMoving"]


class _Timer:
    def __init__(self, progress=None):
        self.times: dict[str, float] = {}
        self.progress = progress  # progress(stage) at the START of each stage (CLI display)

    @contextmanager
    def __call__(self, name: str):
        if self.progress is not None:
            self.progress(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class FixedToMoving:
    """The composed map fixed world -> moving world (and its inverse), evaluable chunk by chunk."""

    ndim: int
    work_affine: np.ndarray  # (n+1) square, working voxel -> world
    affine_matrix: np.ndarray  # (n+1) square, fixed world -> moving world
    disp_vox: torch.Tensor  # (1, n, *S_w) forward displacement, working voxels
    inv_disp_vox: torch.Tensor  # (1, n, *S_w) inverse displacement, working voxels

    def _through(self, world: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(self.work_affine, dtype=world.dtype)
        p = apply_matrix(torch.linalg.inv(w), world)
        d = sample(disp.to(world.dtype), p.unsqueeze(0), padding_mode="border")[0]
        return apply_matrix(w, p + d)

    def forward(self, world: torch.Tensor) -> torch.Tensor:
        """Fixed world points ``(n, *S)`` -> moving world points."""
        return apply_matrix(torch.as_tensor(self.affine_matrix, dtype=world.dtype), self._through(world, self.disp_vox))

    def inverse(self, world: torch.Tensor) -> torch.Tensor:
        """Moving world points ``(n, *S)`` -> fixed world points."""
        tinv = torch.as_tensor(np.linalg.inv(self.affine_matrix), dtype=world.dtype)
        return self._through(apply_matrix(tinv, world), self.inv_disp_vox)


# Smallest working-grid side, per dimensionality, that features, affine pooling and the Jacobian's
# torch.gradient accept (3-D MIND pools with a 5-voxel kernel; 2-D needs 2 for finite differences;
# measured with the mind extractor).  Thinner fields of view used to end in a torch RuntimeError
# with a traceback; now they are a one-line UniRegError naming the file.
MIN_WORKING_SIDE = {2: 2, 3: 5}


def _check_working_size(w_shape, w_aff4, path, which: str) -> None:
    need = MIN_WORKING_SIDE[len(w_shape)]
    if min(w_shape) >= need:
        return
    sp = float(np.linalg.norm(np.asarray(w_aff4)[:3, 0]))
    dims = "x".join(str(n) for n in w_shape)
    raise UniRegError(
        f"{which} image's field of view is too small to register: {dims} voxels on the {sp:g} mm working grid, "
        f"at least {need} per axis ({(need - 1) * sp:g} mm) needed",
        path,
    )


def displacement_on_grid(mapping, shape, affine4, chunk_voxels: int = 2_000_000) -> np.ndarray:
    """World displacement ``mapping(x) - x`` (RAS mm) at every voxel of a grid: ``(n, *shape)`` float32."""
    nd = len(shape)
    out = np.empty((nd,) + tuple(shape), dtype=np.float32)
    a = torch.as_tensor(affine_nd(affine4, nd), dtype=torch.float32)
    for rows in slabs(shape, chunk_voxels):
        x = apply_matrix(a, slab_voxels(shape, rows))
        out[:, rows] = (mapping(x) - x).numpy().astype(np.float32)
    return out


def warp_labels(labels: np.ndarray, src_affine4, out_shape, out_affine4, world_map, max_labelwise: int = 64) -> np.ndarray:
    """Resample an integer label map: label-wise linear interpolation + argmax (few labels) or nearest."""
    values = np.unique(labels)
    t = torch.from_numpy(labels.astype(np.int64 if labels.dtype.kind in "iu" else np.int64))[None]
    if len(values) > max_labelwise:
        out = pull(t.float(), src_affine4, out_shape, out_affine4, world_map=world_map, mode="nearest")
        return out[0].round().numpy().astype(labels.dtype)
    best = torch.full(tuple(out_shape), -1.0)
    result = torch.zeros(tuple(out_shape), dtype=torch.int64)
    for v in values:
        prob = pull((t == int(v)).float(), src_affine4, out_shape, out_affine4, world_map=world_map)[0]
        better = prob > best
        best = torch.where(better, prob, best)
        result = torch.where(better, torch.tensor(int(v)), result)
    return result.numpy().astype(labels.dtype)


@dataclass
class RegistrationResult:
    """Everything one registration produced, as objects (nothing written until :meth:`save`)."""

    fixed: Image
    moving: Image
    warped: Image
    warp_mm: np.ndarray  # (n, *S_fixed) RAS mm on the fixed grid
    inverse_warp_mm: np.ndarray  # (n, *S_moving) RAS mm on the moving grid
    jacobian: np.ndarray  # (*S_fixed)
    affine_matrix: np.ndarray  # 4x4 fixed world -> moving world
    mapping: FixedToMoving
    report: dict
    before: np.ndarray | None  # moving on the fixed grid by world coordinates only (QC); lazy
    warped_labels: Image | None = None
    extras: dict = field(default_factory=dict)

    def before_image(self) -> np.ndarray:
        """The moving image resampled onto the fixed grid by world coordinates only (no registration)."""
        if self.before is None:
            m = torch.from_numpy(np.ascontiguousarray(self.moving.data[:1], dtype=np.float32))
            self.before = pull(m, self.moving.affine, self.fixed.spatial_shape, self.fixed.affine)[0].numpy()
        return self.before

    def save(self, out_dir: str | Path, qc: bool = True, html: bool = True, fmt: str | None = None) -> dict[str, Path]:
        """Write every output into ``out_dir`` atomically; returns name -> path.  ``fmt``: image format
        (``nii.gz``, ``mha``, ``nrrd``; default: the fixed image's)."""
        from .outputs import save_result

        return save_result(self, out_dir, qc=qc, html=html, fmt=fmt)


def _versions() -> dict:
    import nibabel
    import SimpleITK

    from . import __version__

    return {
        "unireg": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "python": platform.python_version(),
    }


def register_images(
    fixed: Image,
    moving: Image,
    model: Registrar,
    *,
    affine: bool = True,
    refine: int = 0,
    smoothness: float = 1.0,
    device: str = "cpu",
    moving_labels: Image | None = None,
    fixed_labels: Image | None = None,
    seed: int = 0,
    model_name: str = "",
    qc_score: bool = True,
    progress=None,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    initial_transform: np.ndarray | None = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (both :class:`Image`) with a :class:`Registrar`.

    ``qc_score=False`` skips the failure score (report.json then holds ``qc_score: null``).
    ``progress``: optional callable ``progress(stage: str)`` called at the start of each stage.
    ``fixed_mask``/``moving_mask``: Images (nonzero = use) on their image's grid; the similarity is
    measured only inside them (affine, failure score).  ``initial_transform``: 4x4 RAS fixed-world ->
    moving-world matrix, the affine stage's start (and the affine itself when ``affine=False``).
    """
    timer = _Timer(progress)
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    nd = fixed.ndim
    if moving.ndim != nd:
        raise UniRegError(f"moving image is {moving.ndim}-D but the fixed image is {nd}-D", moving.path)
    if model.ndim != nd:
        raise UniRegError(f"model is {model.ndim}-D but the images are {nd}-D", model_name or None)
    if moving_labels is not None and moving_labels.spatial_shape != moving.spatial_shape:
        raise UniRegError(
            f"label map shape {moving_labels.spatial_shape} differs from the moving image {moving.spatial_shape}",
            moving_labels.path,
        )
    dev = torch.device(device)
    model = model.to(dev).eval()

    with timer("preprocess"):
        fixed_n = normalize_intensity(fixed.data[0], mask=None if fixed_mask is None else fixed_mask.data[0])
        moving_n = normalize_intensity(moving.data[0], mask=None if moving_mask is None else moving_mask.data[0])
        w_shape, w_aff4 = working_grid(fixed.spatial_shape, fixed.affine, **model.working)
        _check_working_size(w_shape, w_aff4, fixed.path, "fixed")
        fixed_w = to_working_grid(fixed_n, fixed.affine, fixed.spacing, w_shape, w_aff4)

    with timer("affine"):
        t_nd = np.eye(nd + 1) if initial_transform is None else affine_nd(initial_transform, nd)
        if affine:
            m_shape, m_aff4 = working_grid(moving.spatial_shape, moving.affine, **model.working)
            _check_working_size(m_shape, m_aff4, moving.path, "moving")
            moving_w0 = to_working_grid(moving_n, moving.affine, moving.spacing, m_shape, m_aff4)
            if initial_transform is None:  # centroids inside the masks (an artefact outside must not pull)
                fm0 = 1.0 if fixed_mask is None else mask_on_grid(fixed_mask, w_shape, w_aff4).float()
                mm0 = 1.0 if moving_mask is None else mask_on_grid(moving_mask, m_shape, m_aff4).float()
                t_nd = center_of_mass_init(fixed_w[0] * fm0, w_aff4, moving_w0[0] * mm0, m_aff4)
            with torch.no_grad():
                # the affine is optimised at 8 and 4 mm: MIND of the 2x-pooled working images is
                # enough and 8x cheaper than full-resolution features
                from .features import create_extractor

                mind = create_extractor("mind", nd)
                ff_a = mind(pool(fixed_w[None].to(dev), 2))
                fm_a = mind(pool(moving_w0[None].to(dev), 2))
            with torch.enable_grad():
                fm_mask = None if fixed_mask is None else mask_on_grid(fixed_mask, ff_a.shape[2:], pooled_affine(w_aff4, nd, 2))
                mm_mask = None if moving_mask is None else mask_on_grid(moving_mask, fm_a.shape[2:], pooled_affine(m_aff4, nd, 2))
                t_nd = optimize_affine(ff_a, pooled_affine(w_aff4, nd, 2), fm_a, pooled_affine(m_aff4, nd, 2), t_nd,
                                       levels=((2, 60), (1, 12)), fixed_mask=fm_mask, moving_mask=mm_mask)
        t_mat = torch.as_tensor(t_nd, dtype=torch.float32)

        def affine_map(world, rows=None):
            return apply_matrix(t_mat, world)

        moving_w = to_working_grid(moving_n, moving.affine, moving.spacing, w_shape, w_aff4, world_map=affine_map)
        # masks on the working grid (the moving one seen through the affine), for the lead's refinement and QC
        fmask_w = None if fixed_mask is None else mask_on_grid(fixed_mask, w_shape, w_aff4)
        mmask_w = None if moving_mask is None else mask_on_grid(moving_mask, w_shape, w_aff4, world_map=affine_map)

    with timer("features"), torch.no_grad():
        ff = model.extract(fixed_w[None].to(dev))
        fm = model.extract(moving_w[None].to(dev))

    with timer("network"), torch.no_grad():
        velocity = model(ff, fm, smoothness)

    if refine > 0:
        with timer("refine"), torch.enable_grad():
            velocity = refine_velocity(velocity, ff, fm, refine, smoothness=smoothness, int_steps=model.int_steps)

    with timer("integrate"), torch.no_grad():
        disp_w = model.displacement(velocity, w_shape).cpu()
        inv_disp_w = model.displacement(-velocity, w_shape).cpu()
        jac_w = jacobian_determinant(disp_w)[0]
        fold = folding_stats(jac_w)

    qc = {"qc_score": None, "qc_flag": None}
    if qc_score:
        with timer("qc"), torch.no_grad():  # failure score without ground truth (docs/qc.md)
            from .evaluation.qc_score import score_registration

            qc = score_registration(fixed_w, moving_w, disp_w, jac_w, *((ff, fm) if model.extractor_name == "mind" else ()),
                                    fixed_mask=fmask_w, moving_mask=mmask_w)

    mapping = FixedToMoving(nd, affine_nd(w_aff4, nd), t_nd, disp_w, inv_disp_w)

    with timer("resample"), torch.no_grad():
        f_shape = fixed.spatial_shape
        out = resample_fixed_grid(
            f_shape, fixed.affine, w_aff4, t_nd, disp_w, jac_w, moving.data, moving.affine,
            labels=None if moving_labels is None else moving_labels.data[0],
        )
        warp_mm, jac_f = out["warp_mm"], out["jacobian"]
        warped = torch.from_numpy(out["warped"])
        inverse_warp_mm = displacement_on_grid(mapping.inverse, moving.spatial_shape, moving.affine)
        warped_labels = None if out["labels"] is None else Image(out["labels"][None], fixed.affine.copy(), None)
        before = None  # computed on demand for QC (RegistrationResult.before_image)

    report = {
        "fixed": str(Path(fixed.path).resolve()) if fixed.path else None,
        "moving": str(Path(moving.path).resolve()) if moving.path else None,
        "labels": str(Path(moving_labels.path).resolve()) if moving_labels is not None and moving_labels.path else None,
        "fixed_labels": str(Path(fixed_labels.path).resolve()) if fixed_labels is not None and fixed_labels.path else None,
        "ndim": nd,
        "extractor": model.extractor_name,
        "model": model_name or ("trained" if model.trained else "untrained"),
        "model_trained": bool(model.trained),
        "affine": bool(affine),
        "initial_transform": initial_transform is not None,
        "fixed_mask": None if fixed_mask is None else (str(Path(fixed_mask.path).resolve()) if fixed_mask.path else "in memory"),
        "moving_mask": None if moving_mask is None else (str(Path(moving_mask.path).resolve()) if moving_mask.path else "in memory"),
        "affine_matrix": embed_nd(t_nd, nd).tolist(),
        "refine_iterations": int(refine),
        "smoothness": float(smoothness),
        "working_grid": {"shape": list(w_shape), "spacing_mm": float(np.linalg.norm(w_aff4[:3, 0]))},
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "seed": seed,
        **fold,
        **qc,
        "versions": _versions(),
    }
    if not model.trained:
        report["warning"] = (
            "untrained (randomly initialised) UNet: the deformation comes from --refine instance optimisation"
        )
    if fixed_labels is not None and warped_labels is not None:
        from .evaluation.metrics import dice

        before_lab = warp_labels(moving_labels.data[0], moving.affine, f_shape, fixed.affine, None)
        report["dice"] = {str(k): v for k, v in dice(fixed_labels.data[0], warped_labels.data[0]).items()}
        report["dice_before"] = {str(k): v for k, v in dice(fixed_labels.data[0], before_lab).items()}
    timer.times["total"] = time.perf_counter() - t_start
    report["runtime_s"] = {k: round(v, 4) for k, v in timer.times.items()}

    warped_img = Image(warped.numpy(), fixed.affine.copy(), None)
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        warped=warped_img,
        warp_mm=warp_mm,
        inverse_warp_mm=inverse_warp_mm,
        jacobian=jac_f,
        affine_matrix=embed_nd(t_nd, nd),
        mapping=mapping,
        report=report,
        before=before,
        warped_labels=warped_labels,
    )
