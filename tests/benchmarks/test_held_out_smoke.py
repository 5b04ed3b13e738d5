"""Smoke run of ``benchmarks/held_out.py --quick`` (tiny 2-D pair, methods none + UniReg) and its helpers."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "held_out.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def _module():
    spec = importlib.util.spec_from_file_location("held_out", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_table_csv_and_plot(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--dims", "2", "--families", "smooth",
                        "--methods", "none,unireg", "--threads", "1", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "load average" in r.stdout and "| 2-D | deformation: smooth |" in r.stdout
    md = (tmp_path / "held_out.md").read_text()
    assert "(held out)" in md  # the quick smooth pair uses the held-out piecewise intensity family
    assert (tmp_path / "held_out_2d.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "held_out.csv")))
    assert {r["method"] for r in rows} == {"none", "unireg"}
    for row in rows:
        assert row["status"] == "ok", row["status"]
        assert 0.0 <= float(row["dice"]) <= 1.0 and float(row["epe_mm"]) >= 0.0
    uni = next(r for r in rows if r["method"] == "unireg")
    assert float(uni["seconds"]) > 0 and 50 < float(uni["peak_rss_mb"]) < 8000
    assert uni["ic_mm"] not in ("", "nan")  # UniReg writes inverse_warp.nii.gz


def test_fallbacks_read_from_report():
    mod = _module()
    assert mod.fallbacks({}) == []
    assert mod.fallbacks({"stages": {"affine": {"kept": False, "reason": "worse"}, "deformable": {"kept": True}}}) == ["affine"]
    both = {"stages": {"affine": {"kept": False}, "network": {"kept": False}, "deformable": {"kept": False}}}
    assert mod.refused(both) == ["affine", "network", "deformable"]
    # a refused affine is a fallback only where the true map has one; any deformation of an aligned pair
    # may be refused
    assert mod.fallbacks(both, "affine") == ["affine", "deformable"]
    assert mod.fallbacks(both, "radial") == ["deformable"]
    assert mod.fallbacks(both, "aligned") == []


def test_child_rusage_is_the_childs_own(tmp_path):
    """Peak RSS comes from the child, not from this (torch-holding) parent."""
    import torch  # noqa: F401  (makes the parent big)

    mod = _module()
    r = mod.run_child([sys.executable, "-S", "-c", "x = bytearray(300 * 2**20)"], mod.child_env(1), tmp_path / "c.log", 60)
    assert r["rc"] == 0 and 300 <= r["peak_rss_mb"] < 400, r
