"""Smoke test of benchmarks/label_resampling.py: a small map, both label-wise paths, the table
printed (beyond --one-hot-max the vote alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_label_resampling_quick():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "label_resampling.py"), "--labels", "5,20,30", "--size", "40",
           "--threads", "1", "--shift", "0.37", "--one-hot-max", "20"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 5 ") or line.startswith("| 20 ")]
    assert len(rows) == 2, r.stdout
    # the grids 0.37 mm apart: no point halfway between two labels (no exact ties) and none exactly one voxel
    # beyond the map's edge (where grid_sample's coordinate rounding and the vote's can differ by 1e-7 of a
    # voxel): the two paths must agree exactly
    assert all(row.split("|")[6].strip() == "True" for row in rows), rows
    vote_only = [line.split("|") for line in r.stdout.splitlines() if line.startswith("| 30 ")]
    assert len(vote_only) == 1 and vote_only[0][2].strip() == "-" and float(vote_only[0][4]) > 0, r.stdout
