"""Smoke run of ``benchmarks/held_out.py --quick`` (tiny 2-D pair, methods none + UniReg) and its helpers."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "held_out.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def _module():
    return load_script(SCRIPT)


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
    # the CSV alone gives the same table again
    again = subprocess.run([sys.executable, str(SCRIPT), "--summarise", str(tmp_path / "held_out.csv")],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() in md


def test_summary_counts_each_method_below_no_registration():
    """``UniReg < none`` and the peers' ``ANTs < none`` / ``elastix < none``: pairs a method left worse
    (Dice) than no registration, out of the pairs it was scored on."""
    mod = _module()
    rows = []
    for case, dice in (("2d_smooth_00_mni_t2_native", {"none": 0.8, "unireg": 0.9, "ants": 0.7, "elastix": 0.85}),
                       ("2d_smooth_01_mni_t2_native", {"none": 0.9, "unireg": 0.95, "ants": 0.8, "elastix": 0.7})):
        for m, d in dice.items():
            rows.append({"case": case, "dim": 2, "deformation": "smooth", "intensity": "t2", "grid": "native",
                         "anatomy": "mni", "method": m, "status": "ok", "dice": d, "dice_true_map": 0.99, "epe_mm": 1.0,
                         "folded_pct": 0.0, "logjac_err": 0.1, "ic_mm": 0.1, "seconds": 1.0, "peak_rss_mb": 100.0,
                         "fallback": 0})
    table = mod.summarise(rows, ["none", "unireg", "ants", "elastix"])
    head = next(ln for ln in table.splitlines() if ln.startswith("| dim"))
    assert head.rstrip(" |").endswith("UniReg < none | fallbacks (needed stage refused) | ANTs < none | elastix < none")
    row = next(ln for ln in table.splitlines() if "| all pairs |" in ln)
    assert row.rstrip(" |").endswith("0/2 | 0/2 | 2/2 | 1/2")


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


def test_start_runs_only_the_later_pairs_of_each_family(tmp_path):
    """``--pairs 2 --start 1``: the second pair of the family alone (pairs a ``--pairs 1`` run never drew)."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--dims", "2", "--families", "smooth", "--pairs", "2",
                        "--start", "1", "--methods", "none", "--threads", "1", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cases = {row["case"] for row in csv.DictReader(open(tmp_path / "held_out.csv"))}
    assert len(cases) == 1 and next(iter(cases)).startswith("2d_smooth_01_"), cases
    bad = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--dims", "2", "--pairs", "2", "--start", "2",
                          "--methods", "none", "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert bad.returncode == 2 and "--start" in bad.stderr
