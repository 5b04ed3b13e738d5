"""``benchmarks/qc_real_scans.py``: the failure flag on real scans, on a registration and its broken copies."""

from pathlib import Path

from .scripts import load_script, needs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "qc_real_scans.py"
pytestmark = needs(SCRIPT, "dipy")


def test_labels_follow_the_known_map():
    mod = load_script(SCRIPT)
    assert mod._label({"epe_mm": 0.1}, {"epe_mm": 0.0}) == "aligned"
    assert mod._label({"epe_mm": 1.0}, {"epe_mm": 0.0}) == "moved"
    assert mod._label({"epe_mm": 1.0}, {"epe_mm": 2.0}) == "good"
    assert mod._label({"epe_mm": 1.8}, {"epe_mm": 2.0}) == "ambiguous"
    assert mod._label({"epe_mm": 2.5}, {"epe_mm": 2.0}) == "failed_registration"


def test_two_real_slices_registered_and_broken_on_purpose():
    """The first two frozen 2-D pairs (a T1 slice kept aligned, an EPI slice): each registration and its broken
    copies scored by the pipeline's own QC call; every copy broken on purpose is flagged, the aligned pair is not."""
    mod = load_script(SCRIPT)
    rows = mod.run((2,), 1, limit=2)
    assert [r["kind"] for r in rows if r["case"].startswith("2d_aligned_500")][:1] == ["aligned"]
    assert not rows[0]["flag"]
    broken = [r for r in rows if r["kind"] in mod.BROKEN]
    assert {r["kind"] for r in broken} == set(mod.BROKEN)  # swapped: the EPI slice gets the T1 slice's image
    assert all(r["flag"] for r in broken), [(r["case"], r["kind"], r["qc_score"]) for r in broken if not r["flag"]]
    assert "flagged / scored" in mod.summary(rows)
