"""Smoke tests of benchmarks/speed.py and benchmarks/apply_speed.py: a tiny crop, one repeat, quiet only
(the figures mean nothing here; the tests check that every method runs as a whole process, writes its
outputs and gets a Dice, and that UniReg and antspyx apply the same ITK warp file alike)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "speed.py"
APPLY_SCRIPT = ROOT / "benchmarks" / "apply_speed.py"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present (installed package without the repository)")
@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="antspyx not installed")
def test_speed_quick(tmp_path):
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-load", "--threads", "1", "--out", str(out),
                        "--same-files", "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ANTs/UniReg" in r.stdout and "load average" in r.stdout
    res = json.loads(out.read_text())["phases"]["quiet"]["results"]
    assert set(res) == {"unireg", "unireg_fast", "unireg_same_files", "unireg_fast_same_files", "ants"}
    quiet = tmp_path / "work" / "quiet"
    files = {name: {p.name for p in (quiet / name).iterdir()} for name in res}
    assert files["unireg_same_files"] == files["unireg_fast_same_files"] == files["ants"]  # the same job
    assert {"warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "warped_labels.nii.gz"} <= files["ants"]
    assert files["ants"] < files["unireg"]  # the default writes more (Jacobian, ANTs split, QC page)
    for m in res.values():
        assert 0.5 < m["dice_gm_wm"] <= 1.0 and m["wall_s"] > 0 and m["peak_mib"] > 0
    # the children's peaks are their own, not the parent's floor (the pair is written by a child)
    assert res["ants"]["peak_mib"] != res["unireg"]["peak_mib"]


def test_busy_helpers_are_killed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    with speed.Busy(2) as b:
        assert all(p.poll() is None for p in b.procs)
    assert all(p.poll() is not None for p in b.procs)


@pytest.mark.skipif(not APPLY_SCRIPT.is_file(), reason="benchmarks/ not present (installed package, no repository)")
@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="antspyx not installed")
def test_apply_speed_quick(tmp_path):
    out = tmp_path / "apply.json"
    r = subprocess.run([sys.executable, str(APPLY_SCRIPT), "--quick", "--threads", "1", "--out", str(out),
                        "--work", str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ANTs/UniReg" in r.stdout and "load average" in r.stdout
    got = json.loads(out.read_text())
    assert set(got["results"]) == {"unireg_image", "ants_image", "unireg_labels", "ants_labels"}
    for m in got["results"].values():
        assert m["wall_s"] > 0 and m["peak_mib"] > 0
    # the same ITK field applied by two tools: the same image up to interpolation rounding and the crop's edge
    assert got["agreement"]["image_mean_diff"] < 0.01
    assert got["agreement"]["labels_agree"] > 0.99
