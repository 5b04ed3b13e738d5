from __future__ import annotations

import numpy as np
import pytest

from unireg.errors import UniRegError
from unireg.io.points import read_points, write_points


def test_read_3d_with_extra_columns(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("label, X ,y,z,t\nA,1,2,3,0\n\nB,-4.5,5e1,6,0\n")
    pts, table = read_points(f)
    np.testing.assert_array_equal(pts, [[1, 2, 3], [-4.5, 50, 6]])
    assert table == [
        {"label": "A", "X": "1", "y": "2", "z": "3", "t": "0"},
        {"label": "B", "X": "-4.5", "y": "5e1", "z": "6", "t": "0"},
    ]
    lps, _ = read_points(f, lps=True)
    np.testing.assert_array_equal(lps, pts * [-1, -1, 1])


def test_read_2d_and_empty(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("\ufeffx,y\n1,2\n")  # a BOM, as spreadsheets write it
    pts, _ = read_points(f)
    assert pts.shape == (1, 2)
    f.write_text("x,y,z\n")
    pts, table = read_points(f)
    assert pts.shape == (0, 3) and table == []


@pytest.mark.parametrize("lps", [False, True])
def test_roundtrip(tmp_path, lps):
    pts = np.array([[0.1, -2.0, 3.25], [1e-7, 5.0, -6.0]])
    table = [{"label": "a", "x": "ignored", "t": "0"}, {"label": "b"}]
    f = tmp_path / "out.csv"
    write_points(f, pts, table, lps=lps)
    assert f.read_text().splitlines()[0] == "x,y,z,label,t"
    back, tab = read_points(f, lps=lps)
    np.testing.assert_array_equal(back, pts)
    assert [r["label"] for r in tab] == ["a", "b"] and tab[1]["t"] == ""
    raw, _ = read_points(f)
    np.testing.assert_array_equal(raw, pts * ([-1, -1, 1] if lps else 1))
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_write_2d_no_table(tmp_path):
    write_points(tmp_path / "a.csv", [[1.0, 2.0]])
    assert (tmp_path / "a.csv").read_text().splitlines() == ["x,y", "1.0,2.0"]
    with pytest.raises(ValueError):
        write_points(tmp_path / "b.csv", np.zeros((2, 4)))


def test_errors(tmp_path):
    f = tmp_path / "p.csv"
    with pytest.raises(UniRegError, match="file not found"):
        read_points(f)
    f.write_text("")
    with pytest.raises(UniRegError, match="empty"):
        read_points(f)
    f.write_text("x,z\n1,2\n")
    with pytest.raises(UniRegError, match="missing column.*y") as e:
        read_points(f)
    assert e.value.path == str(f) and "\n" not in str(e.value)
    f.write_text("x,y,z\n1,2,3\n4,oops,6\n")
    with pytest.raises(UniRegError, match=r"row 2 \(line 3\): y = 'oops' is not a finite number"):
        read_points(f)
    f.write_text("x,y,z\n1,nan,3\n")
    with pytest.raises(UniRegError, match="row 1"):
        read_points(f)
    f.write_text("x,y,z\n1,2\n")
    with pytest.raises(UniRegError, match="row 1 .* 2 fields"):
        read_points(f)
