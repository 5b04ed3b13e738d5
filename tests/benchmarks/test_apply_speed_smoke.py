"""Smoke test of benchmarks/apply_speed.py: a tiny crop, one repeat (the figures mean nothing here; the
test checks that both tools apply the same ITK warp file as whole processes and agree on the result)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "apply_speed.py"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present (installed package without the repository)")
@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="antspyx not installed")
def test_apply_speed_quick(tmp_path):
    out = tmp_path / "apply.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out),
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
