"""``unireg`` end to end through typer's CliRunner (in-process: no interpreter start-up per case).

Click >= 8.2 keeps ``result.stderr`` separate from ``result.stdout``; ``result.output`` holds both.
"""

from __future__ import annotations

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unireg import api
from unireg.cli.main import app
from unireg.io.image import write_image

from ..synthetic_pairs import grid_affine, phantom, rotation, tiny_registrar

torch.set_num_threads(1)

CENTRE = np.array([4.0, -6.0, 10.0])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Fixed (oblique, anisotropic) and moving (other grid) images with label maps, and a tiny model."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("cli_inputs")
    fs, fa = (24, 26, 14), grid_affine((24, 26, 14), (1.2, 1.0, 2.0), rotation(2, 15), CENTRE)
    ms, ma = (22, 22, 20), grid_affine((22, 22, 20), (1.4, 1.3, 1.4), rotation(0, -8), CENTRE + [1.0, 0.0, 0.5])
    f, fl = phantom(fs, fa, CENTRE)
    m, ml = phantom(ms, ma, CENTRE, shift=(2.0, -1.0, 1.0))
    write_image(d / "fixed.nii.gz", f, fa)
    write_image(d / "moving.nii.gz", m, ma)
    write_image(d / "fixed_labels.nii.gz", fl.astype(np.int16), fa)
    write_image(d / "labels.nii.gz", ml.astype(np.int16), ma)
    tiny_registrar(3, 1.5).save(d / "tiny.pt")
    return d


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def registered(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_out") / "run"
    before = {p.name: _digest(p) for p in inputs.iterdir()}
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", out,
                "--labels", inputs / "labels.nii.gz", "--fixed-labels", inputs / "fixed_labels.nii.gz",
                "--model", inputs / "tiny.pt", "--refine", 3])
    assert res.exit_code == 0, res.output
    after = {p.name: _digest(p) for p in inputs.iterdir()}
    return {"out": out, "res": res, "inputs_unchanged": before == after}


def test_register_writes_every_output(inputs, registered):
    out = registered["out"]
    names = {p.name for p in out.iterdir()}
    assert {"warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "jacobian.nii.gz", "warped_labels.nii.gz",
            "report.json", "qc.png", "report.html"} <= names
    assert not [n for n in names if n.startswith(".tmp")]
    fixed = nib.load(inputs / "fixed.nii.gz")
    warp = nib.load(out / "warp.nii.gz")
    assert warp.ndim == 5 and warp.shape == (*fixed.shape, 1, 3) and int(warp.header["intent_code"]) == 1007
    assert np.allclose(warp.affine, fixed.affine, atol=1e-4)
    moving = nib.load(inputs / "moving.nii.gz")
    inv = nib.load(out / "inverse_warp.nii.gz")
    assert inv.shape == (*moving.shape, 1, 3) and np.allclose(inv.affine, moving.affine, atol=1e-4)
    assert nib.load(out / "warped.nii.gz").shape == fixed.shape
    assert nib.load(out / "jacobian.nii.gz").shape == fixed.shape
    wl = nib.load(out / "warped_labels.nii.gz")
    assert wl.get_data_dtype() == np.int16 and wl.shape == fixed.shape
    assert set(np.unique(np.asarray(wl.dataobj))) <= set(np.unique(np.asarray(nib.load(inputs / "labels.nii.gz").dataobj)))
    rep = json.loads((out / "report.json").read_text())
    for key in ("runtime_s", "folded_percent", "sdlogj", "extractor", "model", "versions", "dice", "dice_before"):
        assert key in rep, key
    assert rep["extractor"] == "mind" and {lv["iterations"] for lv in rep["refine_levels"]} == {3}
    assert [lv["level"] for lv in rep["refine_levels"]][:2] == ["coarse", "working"]
    assert set(rep["stages"]) == {"affine", "network", "refine", "deformable", "polish"}
    assert rep["runtime_s"]["total"] > 0
    assert (out / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in (out / "report.html").read_text().lower()


def test_register_leaves_inputs_untouched(registered):
    assert registered["inputs_unchanged"]


def test_register_no_affine(inputs, tmp_path):
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", tmp_path / "o",
                "--model", inputs / "tiny.pt", "--refine", 1, "--no-affine", "--no-qc"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["affine"] is False and np.allclose(rep["affine_matrix"], np.eye(4))


def test_apply_reproduces_warped(inputs, registered, tmp_path):
    out = registered["out"]
    res = _run(["apply", out / "warp.nii.gz", inputs / "moving.nii.gz", "--ref", inputs / "fixed.nii.gz",
                "--out", tmp_path / "w.nii.gz"])
    assert res.exit_code == 0, res.output
    a = nib.load(tmp_path / "w.nii.gz").get_fdata()
    b = nib.load(out / "warped.nii.gz").get_fdata()
    # warped.nii.gz pulls through the same field on the same grid: identical up to float32 rounding
    assert np.abs(a - b).max() < 1e-4 * np.ptp(b)


def test_apply_labels_keeps_dtype_and_label_set(inputs, registered, tmp_path):
    out = registered["out"]
    res = _run(["apply", out / "warp.nii.gz", inputs / "labels.nii.gz", "--ref", inputs / "fixed.nii.gz",
                "--out", tmp_path / "l.nii.gz", "--labels"])
    assert res.exit_code == 0, res.output
    img = nib.load(tmp_path / "l.nii.gz")
    assert img.get_data_dtype() == np.int16
    lab = np.asarray(img.dataobj)
    src = np.asarray(nib.load(inputs / "labels.nii.gz").dataobj)
    assert set(np.unique(lab)) <= set(np.unique(src)) and len(np.unique(lab)) >= 3
    assert np.array_equal(lab, np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj))


def _write_csv(path, pts, extra=True):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "z", "label"] if extra else ["x", "y", "z"])
        for i, p in enumerate(pts):
            w.writerow([repr(float(v)) for v in p] + ([f"p{i}"] if extra else []))


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in rows]), rows


def test_apply_points_matches_api(inputs, registered, tmp_path):
    out = registered["out"]
    fa = nib.load(inputs / "fixed.nii.gz").affine
    rng = np.random.default_rng(1)
    pts = rng.uniform(3, 10, (20, 3)) @ fa[:3, :3].T + fa[:3, 3]
    _write_csv(tmp_path / "p.csv", pts)
    res = _run(["apply-points", out / "warp.nii.gz", tmp_path / "p.csv", "--out", tmp_path / "q.csv"])
    assert res.exit_code == 0, res.output
    got, rows = _read_csv(tmp_path / "q.csv")
    assert np.allclose(got, api.apply_points(out / "warp.nii.gz", pts), atol=1e-6)
    assert [r["label"] for r in rows] == [f"p{i}" for i in range(20)]


def test_apply_points_known_translation(tmp_path):
    """A constant warp of (2, -3, 1.5) mm RAS moves every point by exactly that (and LPS flips x, y)."""
    from unireg.io.warp import write_displacement_field

    a = grid_affine((10, 12, 8), (1.0, 1.5, 2.0), rotation(2, 20), (0, 0, 0))
    t = np.array([2.0, -3.0, 1.5])
    write_displacement_field(tmp_path / "warp.nii.gz", np.broadcast_to(t[:, None, None, None], (3, 10, 12, 8)), a)
    pts = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 3.0], [-2.5, 1.5, -1.0]])
    _write_csv(tmp_path / "p.csv", pts, extra=False)
    res = _run(["apply-points", tmp_path / "warp.nii.gz", tmp_path / "p.csv", "--out", tmp_path / "q.csv"])
    assert res.exit_code == 0, res.output
    assert np.allclose(_read_csv(tmp_path / "q.csv")[0], pts + t, atol=1e-5)
    lps = pts * [-1, -1, 1]
    _write_csv(tmp_path / "p_lps.csv", lps, extra=False)
    res = _run(["apply-points", tmp_path / "warp.nii.gz", tmp_path / "p_lps.csv", "--out", tmp_path / "q_lps.csv", "--lps"])
    assert res.exit_code == 0, res.output
    assert np.allclose(_read_csv(tmp_path / "q_lps.csv")[0], (pts + t) * [-1, -1, 1], atol=1e-5)


# ------------------------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def bad(inputs, tmp_path_factory):
    """One file per kind of bad input."""
    d = tmp_path_factory.mktemp("bad")
    f = nib.load(inputs / "fixed.nii.gz")
    arr, aff = f.get_fdata().astype(np.float32), f.affine
    (d / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08garbage" * 20)
    (d / "truncated.nii.gz").write_bytes((inputs / "fixed.nii.gz").read_bytes()[:300])
    (d / "image.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (d / "broken.mha").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n")
    nib.save(nib.Nifti1Image(np.stack([arr, arr], -1), aff), d / "4d.nii.gz")
    write_image(d / "2d.nii.gz", arr[:, :, 5], aff)
    nan = arr.copy()
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, aff), d / "nan.nii.gz")
    inf = arr.copy()
    inf[1, 2, 3] = -np.inf
    nib.save(nib.Nifti1Image(inf, aff), d / "inf.nii.gz")
    write_image(d / "constant.nii.gz", np.full(arr.shape, 7.0, np.float32), aff)
    write_image(d / "empty_labels.nii.gz", np.zeros(arr.shape, np.uint8), aff)
    (d / "a_file").write_text("I am a file")
    (d / "not_a_checkpoint.pt").write_bytes(b"definitely not a torch file")
    torch.save({"state_dict": {}}, d / "foreign.pt")
    good = torch.load(inputs / "tiny.pt", weights_only=False)
    good["state_dict"] = dict(list(good["state_dict"].items())[:-1])
    torch.save(good, d / "damaged.pt")
    return d


BAD_CASES = {
    # name: (args with {F}=fixed, {M}=moving, {L}=labels, {B}=bad dir, {T}=tiny model; expected stderr fragment)
    "corrupt": (["{B}/corrupt.nii.gz", "{M}"], ["corrupt.nii.gz", "cannot read"]),
    "truncated": (["{F}", "{B}/truncated.nii.gz"], ["truncated.nii.gz", "cannot read"]),
    "format": (["{B}/image.txt", "{M}"], ["image.txt", "extension"]),
    "broken_png": (["{B}/broken.png", "{M}"], ["broken.png", "cannot read"]),
    "broken_mha": (["{F}", "{B}/broken.mha"], ["broken.mha", "cannot read"]),
    "4d": (["{F}", "{B}/4d.nii.gz"], ["4d.nii.gz", "4-D"]),
    "2d_vs_3d": (["{F}", "{B}/2d.nii.gz"], ["2d.nii.gz", "2-D", "3-D"]),
    "nan": (["{B}/nan.nii.gz", "{M}"], ["nan.nii.gz", "NaN"]),
    "inf": (["{F}", "{B}/inf.nii.gz"], ["inf.nii.gz", "Inf"]),
    "constant": (["{F}", "{B}/constant.nii.gz"], ["constant.nii.gz", "constant"]),
    "empty_labels": (["{F}", "{M}", "--labels", "{B}/empty_labels.nii.gz"], ["empty_labels.nii.gz", "label"]),
    "empty_fixed_labels": (["{F}", "{M}", "--labels", "{L}", "--fixed-labels", "{B}/empty_labels.nii.gz"],
                           ["empty_labels.nii.gz", "label"]),
    "missing": (["{F}", "{B}/nope.nii.gz"], ["nope.nii.gz", "not found"]),
    "model_not_checkpoint": (["{F}", "{M}", "--model", "{B}/not_a_checkpoint.pt"], ["not_a_checkpoint.pt", "checkpoint"]),
    "model_foreign": (["{F}", "{M}", "--model", "{B}/foreign.pt"], ["foreign.pt", "checkpoint"]),
    "model_damaged": (["{F}", "{M}", "--model", "{B}/damaged.pt"], ["damaged.pt", "checkpoint"]),
    "model_missing": (["{F}", "{M}", "--model", "{B}/nope.pt"], ["nope.pt", "not found"]),
    "smoothness_high": (["{F}", "{M}", "--smoothness", "20"], ["smoothness", "[0.1, 10]"]),
    "smoothness_low": (["{F}", "{M}", "--smoothness", "0.01"], ["smoothness", "[0.1, 10]"]),
}


def _fill(args, inputs, bad):
    subs = {"{F}": str(inputs / "fixed.nii.gz"), "{M}": str(inputs / "moving.nii.gz"),
            "{L}": str(inputs / "labels.nii.gz"), "{B}": str(bad), "{T}": str(inputs / "tiny.pt")}
    out = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _assert_user_error(res, fragments):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("unireg: error:"), err
    assert "Traceback" not in res.output
    for frag in fragments:
        assert frag in err, (frag, err)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_line_exit_2_no_outputs(case, inputs, bad, tmp_path):
    args, fragments = BAD_CASES[case]
    args = _fill(args, inputs, bad)
    if "--model" not in args:
        args += ["--model", str(inputs / "tiny.pt")]
    # an existing, empty --out must stay empty; a new one must not be created
    for out, existed in ((tmp_path / "existing", True), (tmp_path / "new" / "deeper", False)):
        if existed:
            out.mkdir()
        res = _run(["register", *args, "--out", out, "--refine", "1"])
        _assert_user_error(res, fragments)
        if existed:
            assert list(out.iterdir()) == []
        else:
            assert not out.parent.exists()


def test_out_dir_is_a_file(inputs, bad):
    before = (bad / "a_file").read_text()
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", bad / "a_file",
                "--model", inputs / "tiny.pt"])
    _assert_user_error(res, ["a_file", "file"])
    assert (bad / "a_file").read_text() == before


def test_out_dir_would_overwrite_input(inputs, tmp_path):
    """An input named like an output inside --out is refused before registering (nothing written)."""
    d = tmp_path / "same"
    d.mkdir()
    (d / "warped.nii.gz").write_bytes((inputs / "moving.nii.gz").read_bytes())
    digest = _digest(d / "warped.nii.gz")
    res = _run(["register", inputs / "fixed.nii.gz", d / "warped.nii.gz", "--out", d, "--model", inputs / "tiny.pt"])
    _assert_user_error(res, ["warped.nii.gz", "overwrite"])
    assert [p.name for p in d.iterdir()] == ["warped.nii.gz"] and _digest(d / "warped.nii.gz") == digest


def test_apply_bad_warp_is_user_error(inputs, bad, tmp_path):
    res = _run(["apply", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--ref", inputs / "fixed.nii.gz",
                "--out", tmp_path / "x.nii.gz"])
    _assert_user_error(res, ["fixed.nii.gz", "displacement"])
    assert not (tmp_path / "x.nii.gz").exists()


def test_apply_points_bad_csv_is_user_error(registered, tmp_path):
    (tmp_path / "p.csv").write_text("x,y,z\n1,2,oops\n")
    res = _run(["apply-points", registered["out"] / "warp.nii.gz", tmp_path / "p.csv", "--out", tmp_path / "q.csv"])
    _assert_user_error(res, ["p.csv", "oops"])
    assert not (tmp_path / "q.csv").exists()


def test_fast_and_keep_all_stages_reach_the_pipeline(inputs, tmp_path):
    """--fast runs the coarse and native levels (no working level); --keep-all-stages turns the
    do-no-harm checks off."""
    out = tmp_path / "fast"
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", out, "--no-qc", "--quiet",
                "--model", inputs / "tiny.pt", "--refine", "2", "--fast", "--keep-all-stages", "--allow-flagged"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["refine_levels"] == [{"level": "coarse", "iterations": 2}, {"level": "native", "iterations": 2}]
    assert "do-no-harm check off" in rep["stages"]["affine"]["reason"]
    assert rep["stages"]["deformable"] == {"kept": True, "reason": "do-no-harm check off"}


CUDA = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_apply_and_apply_points_on_a_device(inputs, registered, tmp_path, device):
    """`apply --device` and `apply-points --device` give the CPU's figures (issue #12)."""
    out = registered["out"]
    res = _run(["apply", out / "warp.nii.gz", inputs / "moving.nii.gz", "--ref", inputs / "fixed.nii.gz",
                "--out", tmp_path / "w.nii.gz", "--device", device])
    assert res.exit_code == 0, res.output
    a = nib.load(tmp_path / "w.nii.gz").get_fdata()
    b = nib.load(out / "warped.nii.gz").get_fdata()
    assert np.abs(a - b).max() < 1e-3 * np.ptp(b)
    res = _run(["apply", out / "warp.nii.gz", inputs / "labels.nii.gz", "--ref", inputs / "fixed.nii.gz",
                "--out", tmp_path / "l.nii.gz", "--labels", "--device", device])
    assert res.exit_code == 0, res.output
    lab = np.asarray(nib.load(tmp_path / "l.nii.gz").dataobj)
    ref = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    assert (lab != ref).mean() < 1e-3
    fa = nib.load(inputs / "fixed.nii.gz").affine
    pts = np.random.default_rng(2).uniform(3, 10, (15, 3)) @ fa[:3, :3].T + fa[:3, 3]
    _write_csv(tmp_path / "p.csv", pts)
    res = _run(["apply-points", out / "warp.nii.gz", tmp_path / "p.csv", "--out", tmp_path / "q.csv",
                "--device", device])
    assert res.exit_code == 0, res.output
    got, _ = _read_csv(tmp_path / "q.csv")
    assert np.allclose(got, api.apply_points(out / "warp.nii.gz", pts), atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_register_and_batch_on_a_device(inputs, registered, tmp_path, device):
    """`register --device` and `batch --device` write the CPU run's warp (within float tolerance on CUDA)."""
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", tmp_path / "r",
                "--labels", inputs / "labels.nii.gz", "--fixed-labels", inputs / "fixed_labels.nii.gz",
                "--model", inputs / "tiny.pt", "--refine", 3, "--device", device])
    assert res.exit_code == 0, res.output
    ref = nib.load(registered["out"] / "warp.nii.gz").get_fdata()
    assert np.abs(nib.load(tmp_path / "r" / "warp.nii.gz").get_fdata() - ref).max() < 0.05  # mm
    for name in ("inverse_warp.nii.gz", "deformable_inverse_warp.nii.gz"):  # whole-grid passes on the device
        inv = nib.load(registered["out"] / name).get_fdata()
        assert np.abs(nib.load(tmp_path / "r" / name).get_fdata() - inv).max() < 0.05
    man = tmp_path / "m.csv"
    man.write_text(f"id,fixed,moving\np,{inputs / 'fixed.nii.gz'},{inputs / 'moving.nii.gz'}\n")
    res = _run(["batch", man, "--out", tmp_path / "b", "--model", inputs / "tiny.pt", "--refine", 3,
                "--device", device, "--no-progress", "--no-qc", "--allow-flagged"])
    assert res.exit_code == 0, res.output
    assert np.abs(nib.load(tmp_path / "b" / "p" / "warp.nii.gz").get_fdata() - ref).max() < 0.05


@pytest.mark.parametrize("device", ["gpu7", "cuda:0"])
def test_apply_unusable_device_is_user_error(inputs, registered, tmp_path, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    res = _run(["apply", registered["out"] / "warp.nii.gz", inputs / "moving.nii.gz", "--ref",
                inputs / "fixed.nii.gz", "--out", tmp_path / "w.nii.gz", "--device", device])
    _assert_user_error(res, ["device"])
    assert not (tmp_path / "w.nii.gz").exists()


def test_out_of_memory_names_the_stage(inputs, tmp_path, monkeypatch):
    """A (CUDA) out-of-memory error inside a stage: one line naming the stage and a way out, exit 2,
    no output folder left behind."""
    import torch

    from unireg.stages import deformable

    def oom(s):
        with s.timer("refine"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(deformable, "refine", oom)
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", tmp_path / "o",
                "--model", inputs / "tiny.pt", "--no-qc", "-q"])
    assert res.exit_code == 2, res.output
    last = res.stderr.strip().splitlines()[-1]  # (the line before: the untrained-model warning)
    assert last.startswith("unireg: error: out of") and "Traceback" not in res.output
    for frag in ("memory", "stage 'refine'", "--refine 0"):
        assert frag in last, last
    assert not (tmp_path / "o").exists()


def test_outputs_writes_only_what_is_asked(inputs, tmp_path, monkeypatch):
    """`--outputs warped,warp`: those two and report.json, nothing else; the inverse warp and the ANTs
    split are not even computed (issue #12: only what the user asks for)."""
    from unireg import pipeline

    def no_inverse(self):
        raise AssertionError("the inverse warp was computed although nobody asked for it")

    monkeypatch.setattr(pipeline.RegistrationResult, "inverse_warp_mm", property(no_inverse))
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", tmp_path / "o",
                "--model", inputs / "tiny.pt", "--refine", 1, "--outputs", "warped,warp", "-q"])
    assert res.exit_code in (0, 3), res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["report.json", "warp.nii.gz", "warped.nii.gz"]
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert set(rep["outputs"]) == {"warped", "warp", "report"}


def test_outputs_unknown_name_is_user_error(inputs, tmp_path):
    res = _run(["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "--out", tmp_path / "o",
                "--model", inputs / "tiny.pt", "--outputs", "warped,bogus"])
    _assert_user_error(res, ["bogus", "inverse"])
    assert not (tmp_path / "o").exists()


def _console_script(args, tmp_path):
    """``unireg ARGS`` as the installed script runs it (``main()``), with an atexit mark in the child."""
    import subprocess
    import sys

    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('interpreter teardown ran', flush=True))\n"
        "from unireg.cli.main import main\n"
        f"sys.argv = ['unireg'] + {[str(a) for a in args]!r}\n"
        "main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_console_script_ends_a_finished_register_without_the_teardown(inputs, tmp_path):
    out = tmp_path / "run"
    r = _console_script(["--threads", "1", "register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "-o", out,
                         "--model", inputs / "tiny.pt", "--refine", 2, "-q"], tmp_path)
    assert r.returncode in (0, 3), r.stderr  # 3: flagged (the tiny model), outputs written all the same
    assert "verdict:" in r.stdout and "interpreter teardown ran" not in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["outputs"].values()) <= {p.name for p in out.iterdir()}
    assert nib.load(out / "warp.nii.gz").shape[-1] == 3
    # apply writes its one file, then ends the same way
    r = _console_script(["apply", out / "warp.nii.gz", inputs / "moving.nii.gz", "-r", inputs / "fixed.nii.gz",
                         "-o", tmp_path / "applied.nii.gz"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "interpreter teardown ran" not in r.stdout and nib.load(tmp_path / "applied.nii.gz").shape == (24, 26, 14)
    # a bad input ends the ordinary way: one line, exit 2, the interpreter's teardown included
    r = _console_script(["register", inputs / "fixed.nii.gz", tmp_path / "nothere.nii.gz", "-o", tmp_path / "o2"],
                        tmp_path)
    assert r.returncode == 2 and "nothere.nii.gz" in r.stderr and "interpreter teardown ran" in r.stdout
