"""``benchmarks/atlas_subjects.py``: the subjects' own tissue classes, and one atlas -> subject registration end
to end (UniReg's CLI; the failure flag read from its report)."""

from pathlib import Path

import numpy as np
import pytest

from .scripts import load_script, needs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "atlas_subjects.py"
pytestmark = needs(SCRIPT, "dipy")


@pytest.mark.parametrize("name", ["t1crop", "b0", "epi"])
def test_each_subject_has_grey_and_white_matter_of_its_own(name, tmp_path):
    import nibabel as nib

    mod = load_script(SCRIPT)
    paths = mod.write_inputs(tmp_path, 4.0, [name])
    img = np.asarray(nib.load(str(paths[name])).dataobj)
    cls = np.asarray(nib.load(str(paths[f"{name}_classes"])).dataobj)
    assert img.ndim == 3 and cls.shape == img.shape
    counts = np.bincount(cls.ravel(), minlength=4)
    assert (counts[1:] > 0.05 * counts[1:].sum()).all(), counts
    gm, wm = (float(img[cls == k].mean()) for k in (1, 2))
    assert (wm > gm) if mod.SUBJECTS[name][2] == "t1" else (wm < gm)  # T1: white brighter; T2-weighted: darker


def test_dice_counts_only_the_region():
    mod = load_script(SCRIPT)
    a = np.array([1, 1, 2, 2, 0, 1])
    b = np.array([1, 2, 2, 2, 1, 1])
    region = np.array([True, True, True, True, False, False])
    assert mod.gm_wm_dice(a, b, region) == pytest.approx(np.mean([2 / 3, 4 / 5]))


def test_one_atlas_to_subject_registration_end_to_end(tmp_path):
    mod = load_script(SCRIPT)
    rows = mod.run(["unireg"], ["t1crop"], 2, 2.0, tmp_path, directions=("atlas->subject",))
    (row,) = rows
    assert row["method"] == "unireg" and 0.3 < row["dice"] <= 1.0, row
    assert row["qc_flag"] is False and "refine" in row["kept"], row
