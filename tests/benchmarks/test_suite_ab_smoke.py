"""``benchmarks/suite_ab.py``: both runs on one suite pair, the B setting applied to B only and undone."""

import json
from pathlib import Path

import pytest

from ..spies import spy_on
from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "suite_ab.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def test_the_setting_reaches_run_b_only_and_is_undone(capsys, monkeypatch):
    from unireg.stages import affine as affine_stage

    mod = load_script(SCRIPT)
    seen = spy_on(monkeypatch, mod, "_run_pair", lambda case, fast=False: affine_stage.IMPROVEMENT)
    before, axes = affine_stage.IMPROVEMENT, affine_stage.PRINCIPAL_AXES_STARTS
    sets = ["unireg.stages.affine.IMPROVEMENT=0.9", "unireg.stages.affine.PRINCIPAL_AXES_STARTS={2: False, 3: True}"]
    mod.main(["--dims", "2", "--pairs", "1", "--names", "2d_affine_00", "--set", sets[0], "--set", sets[1]])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["run"] for r in rows] == ["A", "B"] and seen == [before, 0.9]
    assert affine_stage.IMPROVEMENT == before and affine_stage.PRINCIPAL_AXES_STARTS is axes
    # a 90 % cost decrease is more than the affine reaches (65 %): B keeps the identity, A the affine (with the
    # principal-axes search of a refused 2-D answer off too: MI from those starts would find the affine)
    assert rows[0]["affine"] and not rows[1]["affine"], rows
    assert rows[0]["affine_epe"] < 3.0 < rows[1]["affine_epe"], rows
    assert f"run B ({sets[0]}; {sets[1]})" in out and "below none" in out
