"""The registration pipeline: the stages of :mod:`unireg.stages` run in order (prepare -> affine ->
features -> network -> refine -> integrate -> do-no-harm gate -> QC -> resample -> report).

Mapping conventions.  ``T`` (``affine_matrix``) maps fixed world points to moving world points (RAS
mm).  The deformable part lives on the *working grid* ``W`` (world-axis-aligned, isotropic, covering
the fixed image) as ``disp_vox``.  A fixed world point ``x`` is carried to the moving world point

    y = T W (p + disp_vox(p)),  p = W^-1 x,

and every output is one resampling of the *original* moving image at ``y`` (no double interpolation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UniRegError
from .io.image import Image
from .models.registrar import Registrar
from .resample import (
    check_in_view,
    warp_labels,  # noqa: F401  (re-exported: unireg.pipeline.warp_labels)
)
from .spatial.grid import apply_matrix, sample
from .spatial.world import affine_nd, embed_nd, fill_by_slabs, pull, slab_size
from .stages import deformable, finish
from .stages.affine import affine as affine_stage
from .stages.prepare import MIN_WORKING_SIDE, check_working_size, prepare, stage_threads  # noqa: F401
from .stages.state import Options, State, check_transform

__all__ = ["RegistrationResult", "register_images", "FixedToMoving", "displacement_on_grid"]


@dataclass
class FixedToMoving:
    """The composed map fixed world -> moving world (and its inverse), evaluable chunk by chunk."""

    ndim: int
    work_affine: np.ndarray  # (n+1) square, working voxel -> world
    affine_matrix: np.ndarray  # (n+1) square, fixed world -> moving world
    disp_vox: torch.Tensor  # (1, n, *S_w) forward displacement, working voxels
    inv_disp_vox: torch.Tensor  # (1, n, *S_w) inverse displacement, working voxels

    @property
    def device(self) -> torch.device:
        """Where the displacement fields live (the registration's device): whole-grid passes run there."""
        return self.disp_vox.device

    def _through(self, world: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(self.work_affine, dtype=world.dtype, device=world.device)
        p = apply_matrix(torch.linalg.inv(w), world)
        d = sample(disp.to(world.device, world.dtype), p.unsqueeze(0), padding_mode="border")[0]
        return apply_matrix(w, p + d)

    def forward(self, world: torch.Tensor) -> torch.Tensor:
        """Fixed world points ``(n, *S)`` -> moving world points (on the points' device)."""
        t = torch.as_tensor(self.affine_matrix, dtype=world.dtype, device=world.device)
        return apply_matrix(t, self._through(world, self.disp_vox))

    def inverse(self, world: torch.Tensor) -> torch.Tensor:
        """Moving world points ``(n, *S)`` -> fixed world points (on the points' device)."""
        tinv = torch.as_tensor(np.linalg.inv(self.affine_matrix), dtype=world.dtype, device=world.device)
        return self._through(apply_matrix(tinv, world), self.inv_disp_vox)

    def inverse_on_grid(
        self, shape, affine4, *, with_affine: bool = True, chunk_voxels: int | None = None
    ) -> np.ndarray:
        """World displacement ``(n, *shape)`` float32 (RAS mm) of the inverse map at every voxel ``v`` of
        a grid (voxel -> world ``A``): ``x = inverse(A v)`` less ``A v``; ``with_affine=False``: of the
        deformable part's inverse alone (``W (p + inv_disp_vox(p))``, ``p = W^-1 A v``: ANTs'
        ``1InverseWarp``).  The same figures as :func:`displacement_on_grid` of :meth:`inverse`, with the
        matrices composed once in float64 instead of applied one after another to every voxel: per
        voxel one matrix to the working grid, one sampling, one 3x3 product and one affine ramp (a 1 mm
        head: 1.4 -> 0.8 s at one thread; the two differ by float rounding, 3e-5 mm)."""
        nd = self.ndim
        a = affine_nd(np.asarray(affine4, dtype=np.float64), nd)
        w = np.asarray(self.work_affine, dtype=np.float64)
        t_inv = np.linalg.inv(np.asarray(self.affine_matrix, dtype=np.float64)) if with_affine else np.eye(nd + 1)
        pre = np.linalg.inv(w) @ t_inv @ a  # grid voxel -> working voxel
        rest = w @ pre - a  # W p - A v, affine in v (its last row is zero)
        dev = self.device
        pre_t, rest_t, lin_t = (torch.as_tensor(m, dtype=torch.float32, device=dev) for m in (pre, rest, w[:nd, :nd]))
        disp = self.inv_disp_vox.float()
        if chunk_voxels is None:  # points, working coordinates, the sampled field, the result
            chunk_voxels = slab_size(dev, 16, 2_000_000)

        def one(v: torch.Tensor) -> torch.Tensor:
            d = sample(disp, apply_matrix(pre_t, v).unsqueeze(0), padding_mode="border")[0]
            return torch.einsum("ij,j...->i...", lin_t, d) + apply_matrix(rest_t, v)

        return fill_by_slabs(shape, nd, one, chunk_voxels, dev)


def displacement_on_grid(mapping, shape, affine4, chunk_voxels: int | None = None, device=None) -> np.ndarray:
    """World displacement ``mapping(x) - x`` (RAS mm) at every voxel of a grid: ``(n, *shape)`` float32.
    The slabs' points are made on ``device`` (default CPU) and each slab's result is copied back
    (``chunk_voxels`` per slab: :func:`unireg.spatial.world.slab_size`, 2 M on a CPU)."""
    nd = len(shape)
    if chunk_voxels is None:  # points, world and working coordinates, the sampled field, the result
        chunk_voxels = slab_size(device, 16, 2_000_000)
    a = torch.as_tensor(affine_nd(affine4, nd), dtype=torch.float32, device=device)

    def one(v: torch.Tensor) -> torch.Tensor:
        x = apply_matrix(a, v)
        return mapping(x) - x

    return fill_by_slabs(shape, nd, one, chunk_voxels, device)


@dataclass
class RegistrationResult:
    """Everything one registration produced, as objects (nothing written until :meth:`save`)."""

    fixed: Image
    moving: Image
    warped: Image
    warp_mm: np.ndarray  # (n, *S_fixed) RAS mm on the fixed grid
    jacobian: np.ndarray  # (*S_fixed)
    affine_matrix: np.ndarray  # 4x4 fixed world -> moving world
    mapping: FixedToMoving
    report: dict
    before: np.ndarray | None  # moving on the fixed grid by world coordinates only (QC); lazy
    warped_labels: Image | None = None
    extras: dict = field(default_factory=dict)
    _inverse_warp_mm: np.ndarray | None = field(default=None, repr=False)

    @property
    def inverse_warp_mm(self) -> np.ndarray:
        """``(n, *S_moving)`` RAS mm on the moving grid: the moving -> fixed map's displacement.
        Computed on first use (a whole-volume pass: skipped when nobody asks for the inverse)."""
        if self._inverse_warp_mm is None:
            self._inverse_warp_mm = self.mapping.inverse_on_grid(self.moving.spatial_shape, self.moving.affine)
        return self._inverse_warp_mm

    def before_image(self) -> np.ndarray:
        """The moving image resampled onto the fixed grid by world coordinates only (no registration)."""
        if self.before is None:
            m = torch.from_numpy(np.ascontiguousarray(self.moving.data[:1], dtype=np.float32))
            self.before = pull(m, self.moving.affine, self.fixed.spatial_shape, self.fixed.affine)[0].numpy()
        return self.before

    def save(self, out_dir: str | Path, qc: bool = True, html: bool = True, fmt: str | None = None,
             outputs=None) -> dict[str, Path]:
        """Write every output into ``out_dir`` atomically; returns name -> path.  ``fmt``: image format
        (``nii.gz``, ``mha``, ``nrrd``; default: the fixed image's)."""
        from .outputs import save_result

        return save_result(self, out_dir, qc=qc, html=html, fmt=fmt, outputs=outputs)


def register_images(
    fixed: Image,
    moving: Image,
    model: Registrar,
    *,
    affine: bool = True,
    refine: int | None = None,
    fast: bool = False,
    native: bool = True,
    smoothness: float = 1.0,
    device: str = "cpu",
    moving_labels: Image | None = None,
    fixed_labels: Image | None = None,
    seed: int = 0,
    model_name: str = "",
    qc_score: bool = True,
    do_no_harm: bool = True,
    denoise: bool = True,
    initial_transform: np.ndarray | None = None,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    progress: Callable[[str], None] | None = None,
    transform: str = "deformable",
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (both :class:`Image`) with a :class:`Registrar`.

    Runs the stages of :mod:`unireg.stages` in order.  ``refine``: iterations per refinement level
    (None: the default schedule, 0: network only); ``fast``: network + coarse and native levels only;
    ``native=False`` skips the native-resolution level; ``do_no_harm=False`` keeps every stage even
    when it worsens the similarity; ``denoise=False`` leaves noisy images unsmoothed (:mod:`unireg.noise`);
    ``qc_score=False`` skips the failure score (``qc_score: null``).
    ``progress(stage)`` is called as each stage starts.  The caller's model is never moved in place.
    ``transform``: ``"deformable"``, or ``"affine"`` / ``"rigid"`` (the affine stage alone, the
    deformation zero; :data:`unireg.stages.state.TRANSFORMS`, :func:`~unireg.stages.state.check_transform`).
    """
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    nd = fixed.ndim
    if moving.ndim != nd:
        raise UniRegError(f"moving image is {moving.ndim}-D but the fixed image is {nd}-D", moving.path)
    if model.ndim != nd:
        raise UniRegError(f"model is {model.ndim}-D but the images are {nd}-D", model_name or None)
    if moving_labels is not None:
        check_in_view(moving_labels, moving, "label map", "moving image")
    for mask, _img, which in ((fixed_mask, fixed, "fixed"), (moving_mask, moving, "moving")):
        if mask is not None and mask.ndim != nd:
            raise UniRegError(f"{which} mask is {mask.ndim}-D but the {which} image is {nd}-D", mask.path)
    dev = torch.device(device)
    if next(model.parameters(), torch.empty(0)).device != dev:
        model = copy.deepcopy(model).to(dev)  # never move the caller's model in place
    model.eval()
    check_transform(transform, affine)
    opts = Options(affine=affine, transform=transform, refine=refine, fast=fast, native=native, smoothness=smoothness,
                   device=str(dev), seed=seed, qc_score=qc_score, do_no_harm=do_no_harm, denoise=denoise,
                   initial_transform=initial_transform, fixed_mask=fixed_mask, moving_mask=moving_mask,
                   progress=progress, model_name=model_name)
    s = State(fixed, moving, model, opts, dev, moving_labels=moving_labels, fixed_labels=fixed_labels)

    prepare(s)
    with stage_threads(s):  # one thread for a small 2-D pair (the report says how many ran)
        affine_stage(s)
        deformable.features(s)  # the failure score compares them too
        if transform == "deformable":
            deformable.network(s)
            deformable.refine(s)
            deformable.integrate(s)
            deformable.deformable_gate(s)
            deformable.polish(s)
        else:
            deformable.none(s)
        # on the registration's device: the inverse warp's whole-grid pass runs there (points are moved to it)
        mapping = FixedToMoving(nd, affine_nd(s.w_aff4, nd), s.t_nd, s.disp_w.detach(), s.inv_disp_w.detach())
        finish.qc_and_resample(s)
        report = finish.report(s, t_start)
    o = s.outputs
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        warped=o["warped"],
        warp_mm=o["warp_mm"],
        jacobian=o["jacobian"],
        affine_matrix=embed_nd(s.t_nd, nd),
        mapping=mapping,
        report=dict(report),
        before=None,  # computed on demand for QC (RegistrationResult.before_image)
        warped_labels=o["warped_labels"],
    )
