"""The typed schema of ``report.json`` (one source of its keys for the pipeline, batch, HTML and tests).

``REPORT_FORMAT`` is bumped whenever a key is renamed or its meaning changes; readers check it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, TypedDict, cast

from .errors import UniRegError

__all__ = [
    "read_report", "REPORT_FORMAT", "Report", "StageRecord", "WorkingGrid", "REPORT_KEYS", "REQUIRED_KEYS",
    "STAGE_NAMES",
]

REPORT_FORMAT = 2

# Stages whose "kept" decision is recorded (do-no-harm): a stage not kept fell back to the one before.
STAGE_NAMES = ("affine", "network", "refine", "deformable", "polish")


class StageRecord(TypedDict):
    kept: bool
    reason: str


class WorkingGrid(TypedDict):
    shape: list
    spacing_mm: float


class _Required(TypedDict):
    format_version: int
    fixed: Optional[str]
    moving: Optional[str]
    labels: Optional[str]
    fixed_labels: Optional[str]
    ndim: int
    extractor: str
    model: str
    model_trained: bool
    affine: bool
    affine_matrix: list
    refine_iterations: int
    refine_levels: list
    smoothness: float
    working_grid: WorkingGrid
    native_grid: Optional[WorkingGrid]
    device: str
    threads: int
    seed: int
    folded_percent: float
    sdlogj: float
    qc_score: Optional[float]
    qc_flag: Optional[bool]
    stages: dict
    versions: dict
    runtime_s: dict


class Report(_Required, total=False):
    """Keys every report has (``_Required``) plus optional ones."""

    warning: str
    dice: dict
    dice_before: dict
    qc_threshold: float
    jac_min: float
    jac_max: float
    qc_components: dict
    fixed_mask: Optional[str]
    moving_mask: Optional[str]
    initial_transform: bool
    noise: dict  # "fixed"/"moving": {"snr": estimate or None, "sigma_vox": smoothing applied, 0 none} (unireg.noise)
    transform: str  # "deformable", "affine" or "rigid" (reports before session 31: deformable)
    verdict: dict  # added by unireg.api (unireg.verdict.judge)
    outputs: dict  # file names written (unireg.outputs)


REQUIRED_KEYS = frozenset(_Required.__annotations__)
REPORT_KEYS = REQUIRED_KEYS | frozenset(Report.__annotations__)


def read_report(path: str | Path) -> Report:
    """Read a ``report.json``: a JSON object of a format this version understands (reports written
    before format versions existed are read as they are), else a one-line :class:`UniRegError`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UniRegError(f"cannot read report.json ({e})", p) from None
    if not isinstance(data, dict):
        raise UniRegError("report.json is not a JSON object", p)
    version = data.get("format_version")
    if version is not None and (not isinstance(version, int) or version > REPORT_FORMAT):
        raise UniRegError(
            f"report.json format {version!r} is newer than this UniReg reads ({REPORT_FORMAT})", p
        )
    return cast(Report, data)
