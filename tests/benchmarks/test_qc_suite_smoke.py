"""``benchmarks/qc_suite.py``: the flag's rate on suite registrations, counted the way it says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "qc_suite.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def _module():
    return load_script(SCRIPT)


def _row(case, anatomy, flag, not_worse):
    return {"case": case, "anatomy": anatomy, "deformation": "smooth", "intensity": "pd", "grid": "native",
            "qc_flag": flag, "not_worse": not_worse, "dice": 0.9, "dice_none": 0.8, "epe_mm": 1.0,
            "epe_none_mm": 2.0, "qc_score": 0.7 if flag else 0.1}


def test_summary_separates_false_alarms_from_flags_on_worse_registrations():
    rows = [_row("a", "body", True, True), _row("b", "body", True, False), _row("c", "mni", False, True),
            _row("d", "mni", False, True)]
    text = _module().summarise(rows)
    assert text.splitlines()[0] == ("flagged 2/4 registrations; on those not worse than no registration 1/3; "
                                    "on those worse 1/1")
    assert "body 2/2 (false alarms 1/1)" in text and "mni 0/2 (false alarms 0/2)" in text
    assert "  a: " in text and "  b: " in text and "(worse)" in text and "  c: " not in text


def test_one_pair_runs_end_to_end(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--pairs", "1", "--families", "affine", "--threads", "1",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["case"].startswith("2d_affine_00") and 0.0 <= row["qc_score"] <= 1.0
    assert row["dice"] > row["dice_none"]  # a large affine offset, registered
    assert "flagged" in r.stdout and "load average" in r.stdout
