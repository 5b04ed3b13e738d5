import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from unireg.evaluation.metrics import (
    dice,
    endpoint_error,
    hd95,
    jacobian_stats,
    peak_rss_mb,
    target_registration_error,
)


def test_dice_identical_disjoint_and_known_overlap():
    a = np.zeros((6, 6), int)
    a[:2, :2] = 1  # 4 voxels
    a[4:, 4:] = 2
    assert dice(a, a) == {1: 1.0, 2: 1.0, "mean": 1.0}
    b = np.zeros_like(a)
    b[2:4, 2:4] = 1
    d = dice(a, b)
    assert d[1] == 0.0 and d[2] == 0.0 and d["mean"] == 0.0
    c = np.zeros_like(a)
    c[:2, 1:3] = 1  # 4 voxels, 2 shared with a's label 1 -> 2*2/8
    d = dice(a, c)
    assert d[1] == pytest.approx(0.5)
    assert d[2] == 0.0
    assert d["mean"] == pytest.approx(0.25)
    # requested label absent from both -> nan, and ignored by the mean
    d = dice(a, c, labels=[1, 7])
    assert math.isnan(d[7]) and d["mean"] == pytest.approx(0.5)
    # float maps (resampled labels) are rounded
    assert dice(a.astype(np.float32) + 1e-4, a)[1] == 1.0


@pytest.mark.parametrize("axis,spacing,shift", [(0, (2.0, 1.0, 0.5), 3), (2, (2.0, 1.0, 0.5), 4), (1, (1.0, 1.5, 1.0), 2)])
def test_hd95_of_shifted_cube_is_shift_in_mm(axis, spacing, shift):
    a = np.zeros((30, 30, 30), np.uint8)
    a[8:18, 8:18, 8:18] = 1
    b = np.roll(a, shift, axis=axis)
    h = hd95(a, b, spacing)
    assert h[1] == pytest.approx(shift * spacing[axis])
    assert h["mean"] == pytest.approx(shift * spacing[axis])
    assert hd95(a, a, spacing)[1] == 0.0


def test_hd95_empty_label_is_nan():
    a = np.zeros((10, 10), int)
    a[2:5, 2:5] = 1
    a[6:9, 6:9] = 2
    b = a.copy()
    b[b == 2] = 0
    h = hd95(a, b, (1.0, 1.0))
    assert h[1] == 0.0 and math.isnan(h[2]) and h["mean"] == 0.0


def test_endpoint_error_known_fields():
    true = np.zeros((3, 4, 4, 4), np.float32)
    est = true.copy()
    est[0] = 3.0
    est[1] = 4.0  # |(3, 4, 0)| = 5 mm everywhere
    e = endpoint_error(est, true)
    assert e == {"mean": pytest.approx(5.0), "max": pytest.approx(5.0), "p95": pytest.approx(5.0)}
    est[:, 0] = 0.0  # a quarter of voxels exact
    e = endpoint_error(est, true)
    assert e["mean"] == pytest.approx(3.75) and e["max"] == pytest.approx(5.0)
    mask = np.zeros((4, 4, 4), bool)
    mask[0] = True
    assert endpoint_error(est, true, mask)["max"] == 0.0


def test_target_registration_error():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    b = a + np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    t = target_registration_error(a, b)
    assert t["mean"] == pytest.approx(8 / 3)
    assert t["max"] == pytest.approx(5.0)
    assert t["median"] == pytest.approx(2.0)
    assert t["n"] == 3
    with pytest.raises(ValueError):
        target_registration_error(a, b[:2])


def test_jacobian_stats_matches_folding_stats():
    j = np.ones((10, 10), np.float32)
    j[0, :5] = -0.5
    s = jacobian_stats(j)
    assert s["folded_percent"] == pytest.approx(5.0)
    assert s["min"] == pytest.approx(-0.5) and s["max"] == pytest.approx(1.0)
    assert s["sdlogj"] > 0
    assert jacobian_stats(np.ones((4, 4)))["sdlogj"] == 0.0


def test_peak_rss_mb_units_by_hand(monkeypatch):
    """ru_maxrss is KiB on Linux: 262144 KiB (self) and 1048576 KiB (children) -> the larger, 1024 MiB."""
    import resource
    from types import SimpleNamespace

    if sys.platform != "linux":
        pytest.skip("ru_maxrss units checked on Linux")
    kib = {resource.RUSAGE_SELF: 262144, resource.RUSAGE_CHILDREN: 1048576}
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=kib[who]))
    assert peak_rss_mb() == 1024.0


def test_peak_rss_mb_matches_the_kernels_high_water_mark():
    """Against an independent source: /proc's peak resident size (VmHWM, kB) of this process."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc")
    hwm_mb = int(re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M).group(1)) / 1024
    assert 0.95 * hwm_mb <= peak_rss_mb() < 1e6  # >=: a waited-for child may have peaked higher
