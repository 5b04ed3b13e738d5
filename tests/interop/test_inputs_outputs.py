"""What ANTs/elastix users bring: masks, an initial transform, DICOM series, .mha/.nrrd in and out,
and working grids that do not depend on the file format's rounding of the affine."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unireg import api
from unireg.cli.main import app
from unireg.io.image import read_image, write_image
from unireg.io.transform import write_affine
from unireg.io.warp import read_displacement_field
from unireg.spatial.world import working_grid

from ..synthetic_pairs import grid_affine, phantom, rotation, tiny_registrar

sitk = pytest.importorskip("SimpleITK")
torch.set_num_threads(1)
C = np.zeros(3)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------------- masks
def test_fixed_mask_ignores_an_artefact_outside_it(monkeypatch):
    """The feature search honours the fixed mask.  The 3-D affine's intensity-MI step (which takes
    the mask too) is switched off here: with it on, the unmasked run also ends at the shift (0.04 mm
    here), so the artefact's pull on the feature search, which the mask removes, would not show."""
    from unireg.stages import affine as affine_stage

    monkeypatch.setitem(affine_stage.MI_LEVELS, 3, ())
    fs = (32, 32, 28)
    fa = grid_affine(fs, (1.5, 1.5, 1.5), np.eye(3), C)
    f, _ = phantom(fs, fa, C)
    shift = np.array([4.0, -3.0, 2.0])
    m, _ = phantom(fs, fa, C, shift=shift)
    art = f.copy()
    art[:9, :9, :] = 3.0  # a bright slab (a label, a marker, a field-of-view edge) in the fixed image only
    mask = np.zeros(fs, np.uint8)
    mask[9:, 9:, :] = 1
    reg = tiny_registrar(3, 1.5)
    res = {}
    for name, kw in [("artefact", {}), ("masked", {"fixed_mask": (mask, fa)})]:
        r = api.register((art, fa), (m, fa), model=reg, refine=0, **kw)
        t = np.array(r.report["affine_matrix"])
        res[name] = (np.linalg.norm(t[:3, 3] - shift), np.abs(t[:3, :3] - np.eye(3)).max(),
                     r.report["qc_components"]["mismatch_fraction"])
    err_m, lin_m, mis_m = res["masked"]
    err_a, lin_a, mis_a = res["artefact"]
    assert err_m < 0.3 and lin_m < 0.05, res  # as good as without the artefact (0.17 mm, 0.013)
    assert err_a > err_m + 0.15 and lin_a > 2 * lin_m, res  # the artefact does pull when not masked
    assert mis_m < 0.05 < mis_a, res  # the failure score looks only inside the mask
    monkeypatch.undo()  # the default, MI step on, with the mask: as good
    r = api.register((art, fa), (m, fa), model=reg, refine=0, fixed_mask=(mask, fa))
    t = np.array(r.report["affine_matrix"])
    assert np.linalg.norm(t[:3, 3] - shift) < 0.3 and np.abs(t[:3, :3] - np.eye(3)).max() < 0.05, t


def test_mask_options_reach_the_report_and_bad_mask_is_exit_2(tmp_path):
    fs = (20, 20, 16)
    fa = grid_affine(fs, (1.5, 1.5, 1.5), np.eye(3), C)
    f, lab = phantom(fs, fa, C)
    write_image(tmp_path / "f.nii.gz", f, fa)
    write_image(tmp_path / "mask.nii.gz", (lab > 0).astype(np.uint8), fa)
    elsewhere = fa.copy()
    elsewhere[:3, 3] += 300.0  # a grid of its own that its header puts 300 mm away
    write_image(tmp_path / "elsewhere.nii.gz", np.ones((5, 5, 5), np.uint8), elsewhere)
    tiny_registrar(3, 1.5).save(tmp_path / "tiny.pt")
    base = ["register", tmp_path / "f.nii.gz", tmp_path / "f.nii.gz", "--model", tmp_path / "tiny.pt", "--refine", 1]
    r = _cli(*base, "--out", tmp_path / "o", "--fixed-mask", tmp_path / "mask.nii.gz",
             "--moving-mask", tmp_path / "mask.nii.gz")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["fixed_mask"].endswith("mask.nii.gz") and rep["moving_mask"].endswith("mask.nii.gz")
    r = _cli(*base, "--out", tmp_path / "o2", "--fixed-mask", tmp_path / "elsewhere.nii.gz")
    assert r.exit_code == 2 and "elsewhere.nii.gz" in r.stderr and "does not meet the fixed image" in r.stderr


# -------------------------------------------------------------------------------- initial transform
def test_initial_transform_is_the_affine_with_no_affine(tmp_path):
    fs = (20, 22, 16)
    fa = grid_affine(fs, (1.5, 1.5, 1.5), rotation(2, 10), C)
    f, _ = phantom(fs, fa, C)
    far = fa.copy()
    far[:3, 3] += [400.0, 0.0, 0.0]  # the same object 400 mm away
    write_image(tmp_path / "f.nii.gz", f, fa)
    write_image(tmp_path / "far.nii.gz", f, far)
    t = np.eye(4)
    t[0, 3] = 400.0  # fixed world -> moving world
    write_affine(tmp_path / "init.mat", t)
    tiny_registrar(3, 1.5).save(tmp_path / "tiny.pt")
    base = ["register", tmp_path / "f.nii.gz", tmp_path / "far.nii.gz", "--model", tmp_path / "tiny.pt",
            "--refine", 1, "--no-affine"]
    assert _cli(*base, "--out", tmp_path / "a").exit_code == 3  # without it: no overlap, flagged
    r = _cli(*base, "--out", tmp_path / "b", "--initial-transform", tmp_path / "init.mat")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["initial_transform"] is True and np.allclose(rep["affine_matrix"], t, atol=1e-6)
    # with the affine stage on, it starts from the file (and stays near it: same image)
    r = _cli("register", tmp_path / "f.nii.gz", tmp_path / "far.nii.gz", "--model", tmp_path / "tiny.pt",
             "--refine", 1, "--out", tmp_path / "c", "--initial-transform", tmp_path / "init.mat")
    assert r.exit_code == 0, r.output
    got = np.array(json.loads((tmp_path / "c" / "report.json").read_text())["affine_matrix"])
    assert np.abs(got[:3, 3] - t[:3, 3]).max() < 1.0


# --------------------------------------------------------------------- formats and stable grids
def _twins(tmp_path, perturb):
    """Fixed/moving as .nii.gz and as .mha; the .mha geometry off by ``perturb`` (relative, ~1e-6 mm)."""
    fs = (21, 23, 17)  # extents 30, 33, 24 mm: exact multiples of the 1.5 mm working spacing
    fa = grid_affine(fs, (1.5, 1.5, 1.5), np.eye(3), C)
    f, _ = phantom(fs, fa, C)
    m, _ = phantom(fs, fa, C, shift=(2.0, -1.5, 1.0))
    write_image(tmp_path / "f.nii.gz", f, fa)
    write_image(tmp_path / "m.nii.gz", m, fa)
    fa2 = fa.copy()
    fa2[:3, :3] *= 1.0 - perturb
    write_image(tmp_path / "f.mha", f, fa2)
    write_image(tmp_path / "m.mha", m, fa2)
    return fs, fa, fa2


def test_working_grid_stable_under_tiny_affine_changes():
    rng = np.random.default_rng(0)
    fs = (98, 116, 94)
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = [-98.0, -134.0, -72.0]
    shape, aff = working_grid(fs, a, 2.0)
    for _ in range(50):
        b = a.copy()
        b[:3, :] += rng.uniform(-1e-4, 1e-4, (3, 4)) / 100  # 1e-4 mm over the field of view
        s2, a2 = working_grid(fs, b, 2.0)
        assert s2 == shape and np.abs(a2 - aff).max() < 1e-3


def test_nii_and_mha_twins_give_the_same_warp_and_outputs_follow_the_format(tmp_path):
    fs, fa, fa2 = _twins(tmp_path, 2e-7)
    tiny_registrar(3, 1.5).save(tmp_path / "tiny.pt")
    outs = {}
    for ext in ("nii.gz", "mha"):
        out = tmp_path / f"o_{ext}"
        r = _cli("register", tmp_path / f"f.{ext}", tmp_path / f"m.{ext}", "--model", tmp_path / "tiny.pt",
                 "--refine", 3, "--out", out, "--seed", 1)
        assert r.exit_code == 0, r.output
        outs[ext] = out
    assert (outs["mha"] / "warped.mha").is_file() and (outs["mha"] / "jacobian.mha").is_file()
    assert not (outs["mha"] / "warped.nii.gz").exists() and (outs["mha"] / "warp.nii.gz").is_file()
    w1, _ = read_displacement_field(outs["nii.gz"] / "warp.nii.gz")
    w2, _ = read_displacement_field(outs["mha"] / "warp.nii.gz")
    # the same warp: float rounding of the 2e-7 geometry difference may move a voxel or two at the
    # field of view's edge by a few hundredths of a mm (0.03 mm measured: Adam's per-parameter steps
    # there), everything else agrees to 0.01 mm
    diff = np.abs(w1 - w2).max(axis=0)
    assert (diff < 0.01).mean() > 0.999 and diff.max() < 0.05, (diff.max(), (diff >= 0.01).mean())
    r = _cli("register", tmp_path / "f.mha", tmp_path / "m.mha", "--model", tmp_path / "tiny.pt", "--refine", 1,
             "--out", tmp_path / "o_nrrd", "--format", "nrrd")
    assert r.exit_code == 0 and (tmp_path / "o_nrrd" / "warped.nrrd").is_file()
    r = _cli("report", tmp_path / "o_nrrd")  # the report rebuild finds the .nrrd outputs
    assert r.exit_code == 0, r.output
    r = _cli("register", tmp_path / "f.mha", tmp_path / "m.mha", "--out", tmp_path / "o_bad", "--format", "png")
    assert r.exit_code == 2 and "unknown output format" in r.stderr


# ----------------------------------------------------------------------------------------- DICOM
def _write_dicom_series(folder, vol_xyz, affine):
    """A CT-like int16 series, one file per slice, with the geometry tags ImageSeriesReader reads."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer resets the C locale
    try:
        _write_dicom_slices(folder, vol_xyz, affine)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder, vol_xyz, affine):
    folder.mkdir()
    lps = np.diag([-1.0, -1.0, 1.0])
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol_xyz.transpose(2, 1, 0)))
    lin = lps @ affine[:3, :3]
    sp = np.linalg.norm(lin, axis=0)
    img.SetSpacing(sp.tolist())
    img.SetDirection((lin / sp).ravel().tolist())
    img.SetOrigin((lps @ affine[:3, 3]).tolist())
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    for i in range(img.GetDepth()):
        s = img[:, :, i]
        for tag, val in [("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                         ("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))),
                         ("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i))))),
                         ("0020|0013", str(i + 1)), ("0028|0030", f"{sp[1]}\\{sp[0]}"), ("0018|0050", str(sp[2]))]:
            s.SetMetaData(tag, val)
        w.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        w.Execute(s)


def test_dicom_series_registers_like_its_nifti_twin(tmp_path):
    fs = (20, 22, 16)
    fa = grid_affine(fs, (1.5, 1.25, 2.0), np.eye(3), C)
    f, _ = phantom(fs, fa, C)
    m, _ = phantom(fs, fa, C, shift=(2.0, -1.0, 1.0))
    mi = np.round(m * 1000).astype(np.int16)
    _write_dicom_series(tmp_path / "dicom", mi, fa)
    write_image(tmp_path / "m.nii.gz", mi, fa)
    write_image(tmp_path / "f.nii.gz", f, fa)
    import locale

    before = locale.getpreferredencoding(False)
    d = read_image(tmp_path / "dicom")
    assert locale.getpreferredencoding(False) == before  # reading DICOM leaves the process's locale alone
    n = read_image(tmp_path / "m.nii.gz")
    assert d.meta["format"] == "dicom" and d.spatial_shape == n.spatial_shape
    assert np.allclose(d.affine, n.affine, atol=1e-3) and np.array_equal(d.data, n.data)
    tiny_registrar(3, 1.5).save(tmp_path / "tiny.pt")
    warps = []
    for mov in ("dicom", "m.nii.gz"):
        out = tmp_path / f"o_{mov.split('.')[0]}"
        r = _cli("register", tmp_path / "f.nii.gz", tmp_path / mov, "--model", tmp_path / "tiny.pt", "--refine", 2,
                 "--out", out)
        assert r.exit_code == 0, r.output
        warps.append(read_displacement_field(out / "warp.nii.gz")[0])
    assert np.abs(warps[0] - warps[1]).max() < 0.01
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("register", tmp_path / "f.nii.gz", empty, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "no DICOM series" in r.stderr
