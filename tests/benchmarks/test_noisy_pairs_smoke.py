"""``benchmarks/noisy_pairs.py``: the Rician noise it adds, and one noisy 2 mm pair end to end (with and without
UniReg's smoothing)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "noisy_pairs.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def test_rician_noise_has_the_asked_snr_and_is_seeded():
    from unireg import noise

    mod = load_script(SCRIPT)
    img = np.zeros((40, 48, 36), np.float32)
    img[8:32, 10:38, 6:30] = 100.0
    a, b = mod.rician(img, 4.0, seed=1), mod.rician(img, 4.0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all()
    assert noise.snr(torch.from_numpy(a)) == pytest.approx(4.0, rel=0.15)


def test_one_noisy_pair_end_to_end(tmp_path):
    mod = load_script(SCRIPT)
    mod.main(["--snr", "3", "--mni-mm", "2", "--methods", "unireg,unireg_raw", "--out-dir", str(tmp_path),
              "--work", str(tmp_path / "w")])
    rows = list(csv.DictReader(open(tmp_path / "noisy_pairs.csv")))
    assert [r["method"] for r in rows] == ["none", "unireg", "unireg_raw"]
    none, smoothed, raw = (float(r["dice"]) for r in rows)
    assert smoothed > none and smoothed > raw + 0.02, (none, smoothed, raw)  # 2 mm, SNR 3: 0.875, 0.887, 0.814
    rep = json.loads((tmp_path / "w" / "snr_3" / "unireg" / "report.json").read_text())
    assert rep["noise"]["fixed"]["sigma_vox"] > 0 and rep["noise"]["moving"]["sigma_vox"] > 0
    assert "noise" not in json.loads((tmp_path / "w" / "snr_3" / "unireg_raw" / "report.json").read_text())
    assert "| 3 |" in (tmp_path / "noisy_pairs.md").read_text()
