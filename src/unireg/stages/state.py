"""The state passed from stage to stage, the options that steer them, and the device-synchronised timer."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..align.referee import Referee
from ..align.refine import FinestLevel
from ..errors import UniRegError
from ..io.image import Image
from ..models.registrar import Registrar

__all__ = ["Options", "State", "Timer", "TRANSFORMS", "check_transform"]

TRANSFORMS = ("deformable", "affine", "rigid")  # what a registration may estimate (Options.transform)


def check_transform(transform: str, affine: bool = True) -> None:
    """A UniRegError unless ``transform`` is one of :data:`TRANSFORMS` and, when it is the affine stage
    alone (``rigid``/``affine``), that stage is on (``affine``)."""
    if transform not in TRANSFORMS:
        raise UniRegError(f"unknown transform {transform!r}; use {', '.join(TRANSFORMS)}")
    if transform != "deformable" and not affine:
        raise UniRegError(f"--transform {transform} with --no-affine leaves nothing to register")


@dataclass
class Options:
    """What the caller asked for (validated by :mod:`unireg.api` / the CLI)."""

    affine: bool = True
    # what is registered: "deformable" (affine, then the deformation), "affine" or "rigid" (the affine
    # stage alone, as antsRegistrationSyN.sh -t a / -t r; rigid: rotations and translations only)
    transform: str = "deformable"
    refine: Optional[int] = None  # iterations per refinement level; None = default schedule, 0 = none
    fast: bool = False  # network + coarse and native refinement (no working level; align.refine.FAST_ITERATIONS)
    native: bool = True  # the native-resolution level
    smoothness: float = 1.0
    device: str = "cpu"
    seed: int = 0
    qc_score: bool = True
    do_no_harm: bool = True  # keep a stage only if it improves the similarity
    denoise: bool = True  # smooth a noisy image before the stages compare it (unireg.noise)
    native_budget_voxels: int = 24_000_000  # cap on the fine grid (memory), e.g. 1 mm whole head ~ 9 M
    initial_transform: Optional[np.ndarray] = None  # (4, 4) RAS fixed world -> moving world
    fixed_mask: Optional[Image] = None
    moving_mask: Optional[Image] = None
    progress: Optional[Callable[[str], None]] = None
    model_name: str = ""

    @property
    def rigid(self) -> bool:
        """Rotations and translations only (``--transform rigid``)."""
        return self.transform == "rigid"


OOM_HINT = {
    "cuda": "try --refine 0 (the network alone), a smaller image (crop it) or --device cpu",
    "cpu": "try --refine 0 (the network alone), a smaller image (crop it) or a machine with more memory",
}


class Timer:
    """Seconds per stage; waits for the device's queued work so GPU time is billed to its stage.

    Running out of memory inside a stage becomes one :class:`UniRegError` line that names the stage,
    the device and a way out (the CLI prints it and exits 2)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        except (torch.OutOfMemoryError, MemoryError) as exc:
            kind = "GPU" if self.device.type == "cuda" else "host"
            hint = OOM_HINT.get(self.device.type, OOM_HINT["cpu"])
            raise UniRegError(f"out of {kind} memory in stage '{name}' on {self.device}: {hint}") from exc
        finally:
            self._sync()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class State:
    """Everything the stages produce, filled in as they run."""

    fixed: Image
    moving: Image
    model: Registrar
    opts: Options
    device: torch.device
    moving_labels: Optional[Image] = None
    fixed_labels: Optional[Image] = None
    timer: Timer = field(init=False)
    # filled by the stages (unset until their stage has run)
    fixed_n: torch.Tensor = field(init=False)  # (*S) normalised intensities, native grids, on the device
    moving_n: torch.Tensor = field(init=False)  # (both smoothed where noisy: unireg.noise)
    noise: dict = field(default_factory=dict)  # "fixed"/"moving": unireg.noise.denoise's record (report "noise")
    w_shape: tuple = field(init=False)
    w_aff4: np.ndarray = field(init=False)  # working grid voxel -> world (4x4)
    fov_w_shape: tuple = field(init=False)  # the working grid over the whole field of view (before the crop)
    fixed_w: torch.Tensor = field(init=False)  # (1, *S_w) on the device
    fine_factor: int = 1  # native (fine) grid = working grid subdivided by this
    f_shape: tuple = field(init=False)
    f_aff4: np.ndarray = field(init=False)
    t_nd: np.ndarray = field(init=False)  # (n+1)-square fixed world -> moving world
    moving_w: torch.Tensor = field(init=False)  # (1, *S_w) moving through the affine, on the device
    ff: torch.Tensor = field(init=False)  # the model's features of fixed_w / moving_w
    fm: torch.Tensor = field(init=False)
    velocity: torch.Tensor = field(init=False)
    refine_levels: list = field(default_factory=list)
    disp_w: torch.Tensor = field(init=False)  # (1, n, *S_w) working voxels
    inv_disp_w: torch.Tensor = field(init=False)
    jac_w: torch.Tensor = field(init=False)
    fold: dict = field(default_factory=dict)
    qc: dict = field(default_factory=lambda: {"qc_score": None, "qc_flag": None})
    stages: dict = field(default_factory=dict)  # name -> {"kept": bool, "reason": str}
    finest: Optional[FinestLevel] = None  # the refinement's finest level, kept for the polish
    gate_weight: Optional[torch.Tensor] = None  # the local gate's fading weights, when it trimmed
    outputs: dict = field(default_factory=dict)
    referee: Optional[Referee] = None  # the do-no-harm NMI referee (built on first use)
    local_referee: Optional[Referee] = None  # the local gate's (more points; built on first use)
    inverse_referee: Optional[Referee] = None  # the referee seen from the moving image (built on first use)
    # the caller's torch thread count (a small 2-D pair's stages run on one: prepare.stage_threads)
    caller_threads: int = 1

    def __post_init__(self):
        self.timer = Timer(self.device)

    @property
    def nd(self) -> int:
        return self.fixed.ndim

    def keep(self, stage: str, kept: bool, reason: str) -> None:
        self.stages[stage] = {"kept": bool(kept), "reason": reason}

    def announce(self, stage: str) -> None:
        if self.opts.progress is not None:
            self.opts.progress(stage)
