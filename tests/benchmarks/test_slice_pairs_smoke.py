"""``benchmarks/slice_pairs.py``: the frozen pair list, the Dice it scores, and one pair end to end (UniReg)."""

from pathlib import Path

import numpy as np
import pytest

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "slice_pairs.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def test_the_pair_list_is_frozen_and_covers_every_contrast():
    mod = load_script(SCRIPT)
    pairs = mod.pair_list(24)
    assert pairs == mod.pair_list(24) and pairs[:3] == mod.pair_list(3)
    assert pairs[0]["case"] == "slice_00_z122_d-5_same", pairs[0]
    assert {p["family"] for p in pairs} == set(mod.FAMILIES)
    assert all(p["d"] in mod.OFFSETS_MM and mod.Z_RANGE[0] <= p["z"] < mod.Z_RANGE[1] for p in pairs)


def test_dice_is_the_mean_over_grey_and_white_matter():
    mod = load_script(SCRIPT)
    a = np.array([[0, 1, 1, 2, 2]])
    assert mod.dice_gm_wm(a, a) == 1.0
    b = np.array([[0, 1, 0, 2, 0]])  # GM 2*1/(2+1), WM 2*1/(2+1)
    assert mod.dice_gm_wm(a, b) == pytest.approx(2 / 3)


def test_one_pair_end_to_end(tmp_path):
    mod = load_script(SCRIPT)
    mod.main(["--pairs", "1", "--methods", "unireg", "--out-dir", str(tmp_path), "--work", str(tmp_path / "w")])
    rows = (tmp_path / "slice_pairs.csv").read_text().splitlines()
    assert rows[0].startswith("case,family") and len(rows) == 3  # header, none, unireg
    none, uni = (float(r.split(",")[5]) for r in rows[1:])
    assert uni > none + 0.03, (none, uni)  # slices 3 mm apart: registration brings the tissues closer
    assert "| all | 1 |" in (tmp_path / "slice_pairs.md").read_text()


def test_a_coronal_pair_goes_to_unireg_as_one_voxel_thick_files(tmp_path):
    import nibabel as nib

    mod = load_script(SCRIPT)
    spec = mod.pair_list(1, "coronal")[0]
    assert spec["case"].startswith("slice_coronal_00_") and spec["axis"] == 1
    uni, flat = mod.write_pair(spec, tmp_path / "w")
    img = nib.load(str(uni["fixed"]))
    assert img.shape == (197, 1, 189)  # one slice of the 1 mm MNI volume, with its geometry
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, 0], np.asarray(nib.load(str(flat["fixed"])).dataobj))
    mod.main(["--pairs", "1", "--methods", "unireg", "--orientation", "coronal", "--out-dir", str(tmp_path),
              "--work", str(tmp_path / "w2")])
    none, uni_dice = (float(r.split(",")[5]) for r in (tmp_path / "slice_pairs.csv").read_text().splitlines()[1:])
    assert uni_dice > none + 0.03, (none, uni_dice)
