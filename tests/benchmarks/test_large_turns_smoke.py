"""``benchmarks/large_turns.py``: the frozen turns, the turned files, and one pair end to end (UniReg)."""

from pathlib import Path

import numpy as np
import pytest

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "large_turns.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def test_the_turns_are_frozen_proper_rotations():
    mod = load_script(SCRIPT)
    turns = mod.turn_list(6)
    assert [t["case"] for t in turns] == [t["case"] for t in mod.turn_list(6)] and turns[0]["case"] == "turn_00_162deg"
    for t in turns:
        r = t["rot"]
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1.0)
        assert np.all(np.abs(t["shift"]) <= mod.SHIFT_MM)
    assert np.mean([t["angle_deg"] for t in turns]) > 90.0  # uniform over rotations: mostly far off


def test_the_moving_files_keep_their_voxels_and_turn_about_the_centre(tmp_path):
    import nibabel as nib

    mod = load_script(SCRIPT)
    arr = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-10.0, 5.0, 0.0]
    for name in ("moving", "moving_labels"):
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / f"{name}.nii.gz"))
    spec = mod.turn_list(1)[0]
    out = mod.write_pair(spec, {k: tmp_path / f"{k}.nii.gz" for k in ("moving", "moving_labels")}, tmp_path / "t")
    img = nib.load(str(out["moving"]))
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    centre_vox = np.r_[(np.array(arr.shape) - 1) / 2, 1.0]
    np.testing.assert_allclose(img.affine @ centre_vox, aff @ centre_vox + np.r_[spec["shift"], 0.0], atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, :3], spec["rot"] @ aff[:3, :3], atol=1e-5)
    # no registration: a label map read through its own header onto a grid it shares is itself
    np.testing.assert_array_equal(mod.labels_on_fixed(tmp_path / "moving_labels.nii.gz", tmp_path / "moving.nii.gz"), arr)


def test_one_turn_end_to_end(tmp_path):
    mod = load_script(SCRIPT)
    mod.main(["--pairs", "1", "--methods", "unireg", "--out-dir", str(tmp_path), "--work", str(tmp_path / "w")])
    rows = (tmp_path / "large_turns.csv").read_text().splitlines()
    assert rows[0].startswith("case,angle_deg") and len(rows) == 3  # header, none, unireg
    none, uni = (float(r.split(",")[3]) for r in rows[1:])
    assert none < 0.5 and uni > 0.9, (none, uni)  # a head turned by 162 degrees, found
    assert "| mean of 1" in (tmp_path / "large_turns.md").read_text()
