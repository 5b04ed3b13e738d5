"""Bad and unusual input: every failure is one line on stderr naming the file, exit 2, no traceback
(unless ``--debug``), and nothing already in ``--out`` changes.  Unusual but valid input (any dtype,
spacing, orientation, shape) registers.  Same inputs + seed on CPU give bit-identical outputs.

Tiny images (12..20 voxels a side) and an untrained registrar on a 1 mm working grid (max 48
voxels), ``--refine 2``, no affine, no QC, so each case costs a fraction of a second.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unireg.cli.main import app
from unireg.io.image import read_image

torch.set_num_threads(1)

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64", "float32", "float64"]
FAST = ["--refine", "2", "--no-affine", "--no-qc"]
SETTINGS = dict(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    from unireg.models.registrar import Registrar

    d = tmp_path_factory.mktemp("models")
    out = {}
    for nd in (2, 3):
        out[nd] = d / f"tiny{nd}d.pt"
        # max_size 48: every image drawn below (<= 19 voxels x 2 mm) keeps the 1 mm working grid
        Registrar(nd, extractor="mind", working={"spacing": 1.0, "max_size": 48}).save(out[nd])
    return out


def _smooth(shape, seed: int) -> np.ndarray:
    """A smooth positive image in [0, 1] with structure (a couple of blobs)."""
    rng = np.random.default_rng(seed)
    z = np.indices(shape, dtype=np.float64)
    img = np.zeros(shape)
    for _ in range(3):
        c = [rng.uniform(0.3, 0.7) * (n - 1) for n in shape]
        r = [rng.uniform(0.15, 0.3) * n for n in shape]
        img += np.exp(-sum(((z[k] - c[k]) / r[k]) ** 2 for k in range(len(shape))))
    return img / img.max()


def _cast(img01: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (img01 * 1000.0 - 100.0).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)  # int64/uint64 values beyond 2**53 lose bits in float
    return np.round(lo + img01 * (hi - lo)).astype(dt)


def _affine(spacing, perm, flips, origin) -> np.ndarray:
    """Voxel-to-world with a signed axis permutation (any of the 48 orthogonal orientations in 3-D)."""
    a = np.eye(4)
    lin = np.zeros((3, 3))
    for col, (row, s, f) in enumerate(zip(perm, spacing, flips)):
        lin[row, col] = s * (-1.0 if f else 1.0)
    a[:3, :3] = lin
    a[:3, 3] = origin
    return a


def _write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(arr, affine, dtype=arr.dtype)  # int64 too, as a careless writer would
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


@st.composite
def images(draw, ndim=None):
    nd = draw(st.sampled_from([2, 3])) if ndim is None else ndim
    shape = tuple(draw(st.integers(12, 20)) for _ in range(nd))
    spacing = [draw(st.sampled_from([0.6, 0.8, 1.0, 1.3, 2.0])) for _ in range(3)]
    perm = draw(st.permutations([0, 1, 2])) if nd == 3 else [0, 1, 2]
    flips = [draw(st.booleans()) for _ in range(nd)] + [False] * (3 - nd)
    origin = [draw(st.floats(-50, 50)) for _ in range(3)]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    arr = _cast(_smooth(shape, seed), dtype)
    return arr, _affine(spacing, perm, flips, origin)


def _cli(args: list[str], **kw):
    return CliRunner().invoke(app, args, **kw)


def _assert_one_line_error(r, must_name: str | os.PathLike):
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    err = r.stderr
    assert err.startswith("unireg: error: ") and err.count("\n") == 1, err
    assert str(must_name) in err, err
    assert "Traceback" not in r.output


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


# ------------------------------------------------------------------------------------- valid input
@settings(**SETTINGS)
@given(fixed=images(), data=st.data())
def test_any_dtype_spacing_orientation_registers(tmp_path_factory, models, fixed, data):
    """Unusual but valid inputs: both images of any dtype, spacing and orientation, different grids."""
    from unireg import api
    from unireg.io.image import read_image

    f_arr, f_aff = fixed
    m_arr, m_aff = data.draw(images(ndim=f_arr.ndim))
    d = tmp_path_factory.mktemp("valid")
    fp = _write_nifti(d / "fixed.nii.gz", f_arr, f_aff)
    mp = _write_nifti(d / "moving.nii", m_arr, m_aff)
    assert read_image(fp).data.dtype == np.float32
    res = api.register(fp, mp, model=str(models[f_arr.ndim]), refine=2, affine=False)
    assert res.warped.data.shape == (1, *f_arr.shape)
    assert res.warp_mm.shape == (f_arr.ndim, *f_arr.shape)
    assert res.inverse_warp_mm.shape == (f_arr.ndim, *m_arr.shape)
    for a in (res.warped.data, res.warp_mm, res.inverse_warp_mm, res.jacobian):
        assert np.isfinite(a).all()
    np.testing.assert_allclose(res.warped.affine, read_image(fp).affine)


def test_near_empty_image_registers(tmp_path, models):
    arr = np.zeros((14, 14, 14), np.float32)
    arr[3, 4, 5] = 1.0  # one bright voxel
    fp = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth((14, 14, 14), 1), "float32"), np.eye(4))
    mp = _write_nifti(tmp_path / "near_empty.nii.gz", arr, np.eye(4))
    r = _cli(["register", str(fp), str(mp), "--out", str(tmp_path / "o"), "--model", str(models[3]), *FAST])
    # one bright voxel is a valid (if poor) moving image: it registers, nothing is NaN, nothing folds
    assert r.exit_code == 0, r.output
    out = tmp_path / "o"
    for name in ("warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "jacobian.nii.gz", "report.json"):
        assert (out / name).is_file(), name
    warped = read_image(out / "warped.nii.gz").data
    assert np.isfinite(warped).all() and 0.0 < warped.max() <= 1.0
    assert json.loads((out / "report.json").read_text())["folded_percent"] == 0.0


# ------------------------------------------------------------------------------------- bad input
BAD_KINDS = [
    "nan", "inf", "constant", "truncated", "garbage", "empty_file", "missing", "four_d", "vector",
    "singular_affine", "bad_extension", "too_thin", "dim_mismatch", "directory",
]


def _make_bad(kind: str, d: Path, rng: np.random.Generator, dtype: str) -> Path:
    shape = (14, 13, 12)
    good = _cast(_smooth(shape, int(rng.integers(1000))), dtype)
    if kind in ("nan", "inf"):
        arr = good.astype(np.float64 if dtype == "float64" else np.float32)
        idx = tuple(rng.integers(0, n) for n in shape)
        arr[idx] = np.nan if kind == "nan" else -np.inf * rng.choice([-1, 1])
        return _write_nifti(d / f"{kind}.nii.gz", arr, np.eye(4))
    if kind == "constant":
        return _write_nifti(d / "constant.nii.gz", np.full(shape, good.flat[0], dtype=good.dtype), np.eye(4))
    if kind in ("truncated", "garbage", "empty_file"):
        p = _write_nifti(d / f"{kind}.nii.gz", good, np.eye(4))
        raw = p.read_bytes()
        cut = int(rng.integers(1, len(raw) - 1))
        p.write_bytes({"truncated": raw[:cut], "garbage": rng.bytes(cut), "empty_file": b""}[kind])
        return p
    if kind == "missing":
        return d / "missing.nii.gz"
    if kind == "four_d":
        return _write_nifti(d / "four_d.nii.gz", np.stack([good, good], -1), np.eye(4))
    if kind == "vector":
        return _write_nifti(d / "vector.nii.gz", np.stack([good] * 3, -1)[..., None, :], np.eye(4))
    if kind == "singular_affine":
        a = np.eye(4)
        a[:3, 1] = a[:3, 0]  # two voxel axes along the same world direction
        img = nib.Nifti1Image(good, a, dtype=good.dtype)
        nib.save(img, str(d / "singular.nii.gz"))
        return d / "singular.nii.gz"
    if kind == "bad_extension":
        p = d / "image.txt"
        p.write_text("1 2 3")
        return p
    if kind == "too_thin":  # 3 slices of 1 mm: below the 5-voxel minimum of the 3-D working grid
        return _write_nifti(d / "thin.nii.gz", _cast(_smooth((14, 14, 3), 2), dtype), np.eye(4))
    if kind == "dim_mismatch":
        return _write_nifti(d / "two_d.nii.gz", _cast(_smooth((16, 16), 3), dtype), np.eye(4))
    if kind == "directory":
        (d / "adir.nii.gz").mkdir()
        return d / "adir.nii.gz"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", BAD_KINDS)  # every kind, each with a few drawn roles/dtypes/corruptions
@settings(**{**SETTINGS, "max_examples": 4})
@given(as_moving=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_bad_image_one_line_exit2_and_out_untouched(tmp_path_factory, models, kind, as_moving, dtype, seed):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(seed)
    bad = _make_bad(kind, d, rng, dtype)
    good = _write_nifti(d / "good.nii.gz", _cast(_smooth((15, 14, 13), seed), dtype), np.diag([1.1, 1.0, 0.9, 1]))
    if kind == "dim_mismatch":
        as_moving = True  # the pipeline names the moving image when dimensionalities differ
    if kind == "too_thin":
        as_moving = False  # without the affine a thin moving image is only sampled on the fixed grid: fine
    fixed, moving = (good, bad) if as_moving else (bad, good)
    out = d / "out"
    out.mkdir()
    (out / "warped.nii.gz").write_bytes(b"result of an earlier run")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    r = _cli(["register", str(fixed), str(moving), "--out", str(out), "--model", str(models[3]), *FAST])
    _assert_one_line_error(r, bad)
    assert _snapshot(out) == before  # nothing already written is lost, changed or added to


@pytest.mark.parametrize("kind", ["float_labels", "elsewhere", "empty_labels", "missing"])
def test_bad_label_maps(tmp_path, models, kind):
    shape = (14, 13, 12)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "float32"), np.eye(4))
    lab_arr = {"float_labels": np.full(shape, 0.5, np.float32), "elsewhere": np.ones((10, 10, 10), np.uint8),
               "empty_labels": np.zeros(shape, np.uint8)}.get(kind)
    lab = tmp_path / f"{kind}.nii.gz"
    lab_aff = np.eye(4)
    if kind == "elsewhere":  # a grid of its own that its header puts 300 mm from the fixed image
        lab_aff[:3, 3] = 300.0
    if lab_arr is not None:
        _write_nifti(lab, lab_arr, lab_aff)
    opt = "--fixed-labels" if kind == "elsewhere" else "--labels"
    r = _cli(["register", str(f), str(m), "--out", str(tmp_path / "o"), "--model", str(models[3]), opt, str(lab), *FAST])
    _assert_one_line_error(r, lab)


def test_failed_run_keeps_earlier_results_byte_identical(tmp_path, models):
    shape = (15, 14, 13)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "int16"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "uint8"), np.diag([1.2, 1, 1, 1]))
    out = tmp_path / "out"
    r = _cli(["register", str(f), str(m), "--out", str(out), "--model", str(models[3]), *FAST])
    assert r.exit_code == 0, r.output
    before = _snapshot(out)
    assert "warp.nii.gz" in before and "report.json" in before
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(m.read_bytes()[:200])
    r = _cli(["register", str(f), str(bad), "--out", str(out), "--model", str(models[3]), *FAST])
    _assert_one_line_error(r, bad)
    assert _snapshot(out) == before


def test_output_dir_problems(tmp_path, models):
    shape = (14, 13, 12)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "float32"), np.eye(4))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # --out under a regular file: cannot be created (works as root, unlike chmod)
    r = _cli(["register", str(f), str(m), "--out", str(blocker / "out"), "--model", str(models[3]), *FAST])
    _assert_one_line_error(r, blocker)
    # --out is itself a file
    r = _cli(["register", str(f), str(m), "--out", str(blocker), "--model", str(models[3]), *FAST])
    _assert_one_line_error(r, blocker)
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; covered by the path-under-a-file test")
def test_read_only_output_dir(tmp_path, models):
    shape = (14, 13, 12)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "float32"), np.eye(4))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = _cli(["register", str(f), str(m), "--out", str(ro), "--model", str(models[3]), *FAST])
        _assert_one_line_error(r, ro)
    finally:
        ro.chmod(0o755)


def test_model_problems(tmp_path, models):
    shape = (14, 13, 12)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "float32"), np.eye(4))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = _cli(["register", str(f), str(m), "--out", str(tmp_path / "o"), "--model", str(junk), *FAST])
    _assert_one_line_error(r, junk)
    r = _cli(["register", str(f), str(m), "--out", str(tmp_path / "o"), "--model", str(models[2]), *FAST])
    _assert_one_line_error(r, "2-D")  # a 2-D model for 3-D images


def _subprocess_register(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "unireg.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_subprocess_one_line_and_debug_traceback(tmp_path, models):
    """The real process: one stderr line and exit 2; ``--debug`` shows the traceback instead."""
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth((14, 13, 12), 1), "float32"), np.eye(4))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"\x00" * 100))  # valid gzip, not a NIfTI header
    args = ["register", str(f), str(bad), "--out", str(tmp_path / "o"), "--model", str(models[3]), *FAST]
    r = _subprocess_register(args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bad) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    # --debug lets the exception through (in-process: one interpreter start is enough for this file)
    r = _cli(["--debug", *args])
    from unireg.errors import UniRegError

    assert r.exit_code != 0 and isinstance(r.exception, UniRegError) and str(bad) in str(r.exception)
    import unireg.cli.main as cli_main

    cli_main._STATE["debug"] = False  # leave the CLI's debug switch off for later tests


# ------------------------------------------------------------------------------------- determinism
def test_cpu_registration_is_bit_identical(tmp_path, models):
    from unireg import api
    from unireg.models.registrar import load_registrar

    shape = (16, 15, 14)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "int16"), np.diag([1.1, 0.9, 1.0, 1.0]))
    runs = []
    for _ in range(2):  # a fresh model object each time, as two separate runs would have
        model = load_registrar(models[3])
        runs.append(api.register(f, m, model=model, refine=5, affine=True, seed=3))
    a, b = runs
    for x, y in ((a.warped.data, b.warped.data), (a.warp_mm, b.warp_mm), (a.inverse_warp_mm, b.inverse_warp_mm),
                 (a.jacobian, b.jacobian), (a.affine_matrix, b.affine_matrix)):
        assert np.array_equal(x, y)


def test_bad_transform_choices(tmp_path, models):
    """An unknown --transform, or one that is the affine stage alone with that stage switched off: a one-line
    error, exit 2, nothing written."""
    shape = (14, 13, 12)
    f = _write_nifti(tmp_path / "f.nii.gz", _cast(_smooth(shape, 1), "float32"), np.eye(4))
    m = _write_nifti(tmp_path / "m.nii.gz", _cast(_smooth(shape, 2), "float32"), np.eye(4))
    out = tmp_path / "o"
    r = _cli(["register", str(f), str(m), "--out", str(out), "--model", str(models[3]), "--transform", "shear"])
    _assert_one_line_error(r, "'shear'")
    assert "rigid" in r.stderr and not out.exists()
    r = _cli(["register", str(f), str(m), "--out", str(out), "--model", str(models[3]), "--transform", "rigid",
              "--no-affine"])
    _assert_one_line_error(r, "--no-affine")
    assert not out.exists()
