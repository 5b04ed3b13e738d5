"""Point sets (landmarks) as CSV files with a header row ``x,y[,z]`` and any extra columns.

Coordinates are world millimetres, RAS by default.  ``lps=True`` reads/writes LPS (ITK's and
ANTs' convention, e.g. ``antsApplyTransformsToPoints`` CSVs with columns ``x,y,z,t``) by negating
x and y.  Extra columns (``label``, ``t``, ...) are kept as strings in ``table`` and written back.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from unireg.errors import UniRegError
from unireg.io.atomic import atomic_path
from unireg.spatial.frames import lps_to_ras, ras_to_lps

__all__ = ["read_points", "write_points"]

_AXES = ("x", "y", "z")


def read_points(path: str | os.PathLike, *, lps: bool = False) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Read points from a CSV file.

    Parameters
    ----------
    path : path-like
        CSV with a header row naming columns ``x``, ``y`` and optionally ``z`` (case-insensitive,
        any order, surrounding spaces ignored); other columns are allowed.
    lps : bool
        The file holds LPS coordinates; they are converted to RAS (x and y negated).

    Returns
    -------
    points : np.ndarray
        ``(N, ndim)`` float64, RAS mm, ``ndim`` = 3 if a ``z`` column is present else 2.
    table : list of dict
        One dict per row, column name -> string as in the file (header names stripped).

    Raises
    ------
    UniRegError
        Missing file, no header, missing ``x``/``y`` column, a row with too few fields, or a
        non-numeric / non-finite coordinate (with its row and line number).
    """
    p = Path(path)
    if not p.is_file():
        raise UniRegError("file not found" if not p.exists() else "not a file", p)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UniRegError(f"cannot read CSV file ({type(e).__name__}: {e})", p) from None
    rows_lines = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]  # skip blank lines
    if not rows_lines:
        raise UniRegError("empty CSV file; expected a header row with columns x,y[,z]", p)
    header = [c.strip() for c in rows_lines[0][1]]
    lower = [c.lower() for c in header]
    missing = [a for a in _AXES[:2] if a not in lower]
    if missing:
        raise UniRegError(f"missing column(s) {', '.join(missing)}; header is {','.join(header)}", p)
    ndim = 3 if "z" in lower else 2
    cols = [lower.index(a) for a in _AXES[:ndim]]
    points = np.zeros((len(rows_lines) - 1, ndim))
    table: list[dict[str, str]] = []
    for n, (line, row) in enumerate(rows_lines[1:]):
        if len(row) < len(header):
            raise UniRegError(f"row {n + 1} (line {line}) has {len(row)} fields, header has {len(header)}", p)
        for k, c in enumerate(cols):
            try:
                v = float(row[c])
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise UniRegError(f"row {n + 1} (line {line}): {header[c]} = {row[c]!r} is not a finite number", p)
            points[n, k] = v
        table.append({h: v.strip() for h, v in zip(header, row)})
    if lps:
        points = lps_to_ras(points)
    return points, table


def write_points(
    path: str | os.PathLike,
    points,
    table: Sequence[dict] | None = None,
    *,
    lps: bool = False,
) -> Path:
    """Write points to a CSV file atomically.

    Parameters
    ----------
    path : path-like
        Output CSV.
    points : array-like
        ``(N, ndim)`` RAS mm, ``ndim`` in {2, 3}.
    table : sequence of dict, optional
        ``N`` row dicts as returned by :func:`read_points`; their columns other than x/y/z are
        written after the coordinates (in first-seen order), missing values left empty.
    lps : bool
        Write LPS coordinates (x and y negated).

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (N, 3), got shape {pts.shape}")
    if table is not None and len(table) != len(pts):
        raise ValueError(f"table has {len(table)} rows but there are {len(pts)} points")
    if lps:
        pts = ras_to_lps(pts)
    axes = list(_AXES[: pts.shape[1]])
    extra: list[str] = []
    for row in table or ():
        extra += [k for k in row if k.lower() not in _AXES and k not in extra]
    with atomic_path(p) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(axes + extra)
            for i, pt in enumerate(pts):
                row = table[i] if table is not None else {}
                w.writerow([repr(float(v)) for v in pt] + [row.get(k, "") for k in extra])
    return p
