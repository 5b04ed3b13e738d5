"""`unireg evaluate` on tiny hand-made result folders (known answers) and one real 2-D registration."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from unireg.errors import UniRegError
from unireg.evaluation.evaluate import evaluate_path, evaluate_result, format_table, jacobian_from_warp, write_metrics
from unireg.io.image import write_image
from unireg.io.warp import write_displacement_field

AFF = np.diag([2.0, 2.0, 2.0, 1.0])
AFF[:3, 3] = [-10.0, 5.0, 3.0]


def _labels(shape=(12, 10, 8)):
    lab = np.zeros(shape, np.uint8)
    lab[3:8, 2:7, 2:6] = 1
    lab[2:5, 6:9, 1:7] = 2
    return lab


def _result(folder, disp_mm, report=None, warped_labels=None, inverse=None):
    folder.mkdir(parents=True, exist_ok=True)
    write_displacement_field(folder / "warp.nii.gz", disp_mm, AFF)
    if inverse is not None:
        write_displacement_field(folder / "inverse_warp.nii.gz", inverse, AFF)
    if warped_labels is not None:
        write_image(folder / "warped_labels.nii.gz", warped_labels[None], AFF)
    (folder / "report.json").write_text(json.dumps(report or {"runtime_s": {"total": 1.5}, "peak_rss_mb": 321.0}))
    return folder


def test_perfect_result_scores_perfectly(tmp_path):
    lab = _labels()
    write_image(tmp_path / "fixed_labels.nii.gz", lab[None], AFF)
    shift = np.zeros((3,) + lab.shape, np.float32)
    shift[0] = 4.0  # 4 mm along x everywhere
    write_displacement_field(tmp_path / "true.nii.gz", shift, AFF)
    res = _result(tmp_path / "r", shift, warped_labels=lab, inverse=-shift)
    fixed_pts = tmp_path / "f.csv"
    moving_pts = tmp_path / "m.csv"
    fixed_pts.write_text("x,y,z\n0,10,7\n2,12,9\n")
    moving_pts.write_text("x,y,z\n4,10,7\n6,12,9\n")  # fixed + u
    row = evaluate_result(res, fixed_labels=tmp_path / "fixed_labels.nii.gz", true_warp=tmp_path / "true.nii.gz",
                          fixed_points=fixed_pts, moving_points=moving_pts)
    assert row["dice_1"] == pytest.approx(1.0) and row["dice_2"] == pytest.approx(1.0)
    assert row["dice_mean"] == pytest.approx(1.0)
    assert row["hd95_mean"] == pytest.approx(0.0)
    assert row["epe_mean"] == pytest.approx(0.0, abs=1e-5) and row["epe_max"] == pytest.approx(0.0, abs=1e-5)
    assert row["tre_before_mean"] == pytest.approx(4.0)
    assert row["tre_mean"] == pytest.approx(0.0, abs=1e-4)
    assert row["folded_percent"] == 0.0 and row["sdlogj"] == pytest.approx(0.0, abs=1e-6)
    assert row["seconds"] == 1.5 and row["peak_mb"] == 321.0


def test_epe_of_a_wrong_field_and_moving_labels_warped_through_the_field(tmp_path):
    lab = _labels()
    write_image(tmp_path / "fixed_labels.nii.gz", lab[None], AFF)
    # moving labels are the fixed ones shifted by +1 voxel (2 mm) along the first axis; the exact warp
    # fixed->moving is +2 mm in x.  The estimated field is zero: EPE 2 mm, Dice < 1.
    write_image(tmp_path / "moving_labels.nii.gz", np.roll(lab, 1, axis=0)[None], AFF)
    true = np.zeros((3,) + lab.shape, np.float32)
    true[0] = 2.0
    write_displacement_field(tmp_path / "true.nii.gz", true, AFF)
    zero = _result(tmp_path / "zero", np.zeros_like(true))
    exact = _result(tmp_path / "exact", true)
    r0 = evaluate_result(zero, fixed_labels=tmp_path / "fixed_labels.nii.gz", moving_labels=tmp_path / "moving_labels.nii.gz",
                         true_warp=tmp_path / "true.nii.gz")
    r1 = evaluate_result(exact, fixed_labels=tmp_path / "fixed_labels.nii.gz", moving_labels=tmp_path / "moving_labels.nii.gz",
                         true_warp=tmp_path / "true.nii.gz")
    assert r0["epe_mean"] == pytest.approx(2.0, abs=1e-5)
    assert r1["epe_mean"] == pytest.approx(0.0, abs=1e-5)
    assert r0["dice_1"] < 0.9
    assert r1["dice_1"] == pytest.approx(1.0)


def test_fixed_labels_on_a_grid_of_their_own_are_scored_in_world_space(tmp_path):
    """Fixed labels on another grid (the same labels in the same world place, padded) score as on the
    warped labels' grid; a header that puts them elsewhere is refused with the file named."""
    lab = _labels()
    warped = lab.copy()
    warped[3:5, 2:4, 2:4] = 0  # a partly wrong result: Dice below 1
    res = _result(tmp_path / "r", np.zeros((3,) + lab.shape, np.float32), warped_labels=warped)
    write_image(tmp_path / "same.nii.gz", lab[None], AFF)
    padded = np.zeros((15, 10, 10), np.uint8)
    padded[3:, :, 2:] = lab
    own = AFF.copy()
    own[:3, 3] -= AFF[:3, :3] @ [3.0, 0.0, 2.0]
    write_image(tmp_path / "own.nii.gz", padded[None], own)
    same = evaluate_result(res, fixed_labels=tmp_path / "same.nii.gz")
    other = evaluate_result(res, fixed_labels=tmp_path / "own.nii.gz")
    assert 0.5 < same["dice_mean"] < 1.0
    assert other["dice_mean"] == pytest.approx(same["dice_mean"])
    assert other["hd95_mean"] == pytest.approx(same["hd95_mean"])
    far = AFF.copy()
    far[:3, 3] += 400.0
    write_image(tmp_path / "far.nii.gz", lab[None], far)
    with pytest.raises(UniRegError, match="does not meet the warped labels") as e:
        evaluate_result(res, fixed_labels=tmp_path / "far.nii.gz")
    assert "far.nii.gz" in str(e.value)


def test_jacobian_from_warp_detects_folding():
    d = np.zeros((2, 9, 9), np.float32)
    d[0] = -3.0 * np.arange(9)[:, None]  # -3 mm per 1.5 mm voxel: du/dx = -2, det(J) = 1 - 2 = -1
    aff = np.diag([1.5, 1.5, 1.0, 1.0])
    assert np.allclose(jacobian_from_warp(d, aff), -1.0)


def test_folder_of_results_gives_rows_and_mean(tmp_path):
    lab = _labels()
    for i, s in enumerate([0.0, 2.0]):
        f = np.zeros((3,) + lab.shape, np.float32)
        f[1] = s
        _result(tmp_path / "runs" / f"case{i}", f, report={"runtime_s": {"total": 1.0 + i}})
    rows = evaluate_path(tmp_path / "runs")
    assert [r["name"] for r in rows] == ["case0", "case1", "mean"]
    assert rows[-1]["seconds"] == pytest.approx(1.5)
    table = format_table(rows)
    assert "case1" in table and "seconds" in table
    paths = write_metrics(rows, tmp_path / "m")
    assert json.loads(paths["json"].read_text())["rows"][2]["name"] == "mean"
    assert paths["csv"].read_text().splitlines()[0].startswith("name,")


def test_cli_evaluate_after_register(tmp_path):
    """End to end on a tiny 2-D pair: `unireg register` then `unireg evaluate`."""
    from unireg.cli.main import app

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    img = ((yy - 20) ** 2 + (xx - 19) ** 2 < 120).astype(np.float32) + 0.05 * rng.random((40, 40), dtype=np.float32)
    lab = (img > 0.5).astype(np.uint8)
    aff = np.eye(4)
    write_image(tmp_path / "f.nii.gz", img[None], aff, dtype=np.float32)
    write_image(tmp_path / "m.nii.gz", np.roll(img, 2, axis=0)[None], aff, dtype=np.float32)
    write_image(tmp_path / "fl.nii.gz", lab[None], aff)
    write_image(tmp_path / "ml.nii.gz", np.roll(lab, 2, axis=0)[None], aff)
    runner = CliRunner()
    r = runner.invoke(app, ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "out"),
                            "--labels", str(tmp_path / "ml.nii.gz"), "--fixed-labels", str(tmp_path / "fl.nii.gz"),
                            "--refine", "5", "--no-qc", "--no-affine"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "dice_mean" in r.output and "folded_percent" in r.output
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    assert 0.5 < rows[0]["dice_mean"] <= 1.0 and rows[0]["seconds"] > 0
    # a bad option is one line and exit 2
    r = runner.invoke(app, ["evaluate", str(tmp_path / "out"), "--fixed-points", str(tmp_path / "nope.csv")])
    assert r.exit_code == 2


def test_epe_inside_the_object_by_default_with_before_column(tmp_path):
    """A field exact inside the object and 10 mm off in the background: EPE 0 inside by default
    (labels, then the fixed image's foreground), the background only with --mask all."""
    lab = _labels()
    obj = lab != 0
    write_image(tmp_path / "fixed_labels.nii.gz", lab[None], AFF)
    img = np.where(obj, 1.0, 0.0).astype(np.float32) + 0.001 * np.arange(lab.size).reshape(lab.shape) / lab.size
    write_image(tmp_path / "fixed.nii.gz", img[None], AFF)
    true = np.zeros((3,) + lab.shape, np.float32)
    true[1] = 3.0
    est = true.copy()
    est[0][~obj] = 10.0  # wrong only where there is no object
    write_displacement_field(tmp_path / "true.nii.gz", true, AFF)
    res = _result(tmp_path / "r", est, report={"fixed": str(tmp_path / "fixed.nii.gz")})
    row = evaluate_result(res, fixed_labels=tmp_path / "fixed_labels.nii.gz", true_warp=tmp_path / "true.nii.gz")
    assert row["epe_mean"] == pytest.approx(0.0, abs=1e-5) and row["epe_region"] == "fixed labels"
    assert row["epe_before_mean"] == pytest.approx(3.0)
    row = evaluate_result(res, true_warp=tmp_path / "true.nii.gz")  # no labels: the fixed image's foreground
    assert row["epe_mean"] == pytest.approx(0.0, abs=1e-5) and row["epe_region"] == "fixed image foreground"
    row = evaluate_result(res, true_warp=tmp_path / "true.nii.gz", epe_mask="all")
    assert row["epe_mean"] > 5.0
    from unireg.cli.main import app

    r = CliRunner().invoke(app, ["evaluate", str(res), "--true-warp", str(tmp_path / "true.nii.gz"),
                                 "--mask", str(tmp_path / "fixed_labels.nii.gz"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "epe_before_mean" in r.stdout and "mask fixed_labels.nii.gz" in r.stdout
