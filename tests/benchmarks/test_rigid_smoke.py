"""``benchmarks/rigid.py``: its frozen pairs carry a rigid true map, and two 2-D pairs end to end (UniReg's rigid
mode against no registration; the table printed)."""

from pathlib import Path

import numpy as np

from unireg.spatial.world import embed_nd

from .scripts import load_script, needs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "rigid.py"
pytestmark = needs(SCRIPT, "dipy")


def test_the_pairs_are_frozen_and_their_maps_rigid():
    mod = load_script(SCRIPT)
    cases = mod.cases([2], 2)
    assert [c["name"] for c in cases] == ["2d_rigid_00_mni_piecewise_oblique", "2d_rigid_01_t1_slice_flair_crop"]
    for c in cases:
        m = c["true_map"].matrix
        assert np.allclose(m[:2, :2] @ m[:2, :2].T, np.eye(2)) and 3.0 <= c["meta"]["rotation_deg"] <= 25.0
        none_mean, none_max = mod.errors(c, np.eye(4))
        assert 3.0 < none_mean < none_max  # the identity is far from the true map
        assert mod.errors(c, embed_nd(m, 2))[1] < 1e-6  # and the true map scores zero


def test_two_pairs_end_to_end(tmp_path, monkeypatch):
    import torch

    mod = load_script(SCRIPT)
    out = tmp_path / "rigid.md"
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # main sets it: restored after the test
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--dims", "2", "--pairs", "2", "--threads", "1", "--methods", "none,unireg",
                         "--transforms", "rigid", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # main sets the process's torch threads
    text = out.read_text()
    row = [line for line in text.splitlines() if line.startswith("| 2-D | unireg rigid |")]
    assert len(row) == 1 and float(row[0].split("|")[3]) < 0.5, text  # mean error in mm
    assert "2-D rigid: UniReg flagged " in text  # the failure flag's verdicts are counted
