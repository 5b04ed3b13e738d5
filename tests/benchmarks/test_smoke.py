"""Smoke test of the benchmark scripts (benchmarks/ is not installed and not in the default suite:
only this fast end-to-end run of ``cross_domain.py --smoke`` on tiny 2-D pairs is)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cross_domain.py"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present (installed package without the repository)")
def test_cross_domain_smoke(tmp_path):
    out = tmp_path / "cross_domain.md"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.read_text()
    assert "| case | method | Dice |" in md
    assert "UniReg (network only)" in md and "no registration" in md
    data = json.loads(out.with_suffix(".json").read_text())
    methods = {row["method"] for row in data["rows"]}
    assert {"identity", "unireg", "unireg_refine"} <= methods
    for row in data["rows"]:
        assert 0.0 <= row["dice_mean"] <= 1.0 and row["epe_mean"] >= 0.0
    if importlib.util.find_spec("ants") is None:
        assert "ANTs SyN (MI)" in data["config"]["skipped"]  # skipped, with the reason written down
    else:
        assert "ants" in methods
    # the elastix worker is left out of --smoke (importing itk alone is slower than the budget), with a reason
    assert any("elastix" in k for k in data["config"]["skipped"])
    print(f"smoke run: {wall:.1f} s wall")
