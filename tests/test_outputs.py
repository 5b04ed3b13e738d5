"""Writing a RegistrationResult: every file, atomic, never over an input, nothing partial on failure."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from unireg import api
from unireg.errors import UniRegError
from unireg.io.image import write_image
from unireg.outputs import OUTPUT_NAMES

from .synthetic_pairs import grid_affine, phantom, rotation, tiny_registrar

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("outputs_in")
    fs, fa = (40, 36), grid_affine((40, 36), (1.0, 1.2), rotation(2, 10)[:2, :2], (3.0, -4.0))
    ms, ma = (38, 40), grid_affine((38, 40), (1.1, 1.0), np.eye(2), (4.0, -4.0))
    f, fl = phantom(fs, fa, (3.0, -4.0))
    m, ml = phantom(ms, ma, (3.0, -4.0), shift=(1.0, 0.5))
    write_image(d / "f.nii.gz", f, fa)
    write_image(d / "m.nii.gz", m, ma)
    write_image(d / "ml.nii.gz", ml.astype(np.uint8), ma)
    write_image(d / "fl.nii.gz", fl.astype(np.uint8), fa)
    return api.register(
        d / "f.nii.gz",
        d / "m.nii.gz",
        labels=d / "ml.nii.gz",
        fixed_labels=d / "fl.nii.gz",
        model=tiny_registrar(2, 1.0),
        refine=2,
    )


def test_save_writes_everything(result, tmp_path):
    paths = result.save(tmp_path / "a" / "b")
    assert set(paths) == set(OUTPUT_NAMES)
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert not [p for p in (tmp_path / "a" / "b").iterdir() if p.name.startswith(".tmp")]
    rep = json.loads(paths["report"].read_text())
    assert rep["outputs"] == {k: v.name for k, v in paths.items()}
    assert np.asarray(rep["affine_matrix"]).shape == (4, 4)
    assert nib.load(paths["warped_labels"]).get_data_dtype() == np.uint8
    assert nib.load(paths["warped"]).get_data_dtype() == np.float32
    w = nib.load(paths["warp"])
    assert w.shape == (*result.fixed.spatial_shape, 1, 1, 2) and int(w.header["intent_code"]) == 1007
    # on disk LPS, in memory RAS
    disk = np.asarray(w.dataobj)[:, :, 0, 0, :]
    assert np.allclose(disk[..., 0], -result.warp_mm[0], atol=1e-6)
    assert np.allclose(disk[..., 1], -result.warp_mm[1], atol=1e-6)


def test_save_without_qc_and_html(result, tmp_path):
    paths = result.save(tmp_path, qc=False, html=False)
    assert "qc" not in paths and "html" not in paths
    assert not (tmp_path / "qc.png").exists() and not (tmp_path / "report.html").exists()


def test_save_refuses_to_overwrite_an_input(result, tmp_path):
    import dataclasses

    fake_fixed = dataclasses.replace(result.fixed, path=str(tmp_path / "warped.nii.gz"))
    (tmp_path / "warped.nii.gz").write_bytes(b"precious")
    bad = dataclasses.replace(result, fixed=fake_fixed)
    with pytest.raises(UniRegError, match="overwrite"):
        bad.save(tmp_path)
    assert (tmp_path / "warped.nii.gz").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["warped.nii.gz"]


def test_save_into_a_file_is_user_error(result, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UniRegError, match="not a directory"):
        result.save(tmp_path / "f")


def test_failure_half_way_leaves_no_partial_outputs(result, tmp_path, monkeypatch):
    import unireg.reports.qc as qc

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qc, "render_qc_png", boom)
    with pytest.raises(OSError):
        result.save(tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_failure_keeps_earlier_results_of_other_runs(result, tmp_path, monkeypatch):
    """Files that were there before the failing save (a previous run) are not deleted."""
    import unireg.reports.qc as qc

    result.save(tmp_path, qc=False, html=False)
    before = {p.name for p in tmp_path.iterdir()}
    monkeypatch.setattr(qc, "render_qc_png", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        result.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == before


def test_save_works_for_in_memory_arrays(tmp_path):
    """Images given as (array, affine) have no path: the report must still be built."""
    import numpy as np

    import unireg
    from tests.synthetic_pairs import grid_affine, phantom, tiny_registrar

    aff = grid_affine((24, 24), (1.0, 1.0), np.eye(2), (0.0, 0.0))
    fixed, _ = phantom((24, 24), aff, (0.0, 0.0))
    moving, _ = phantom((24, 24), aff, (0.0, 0.0), shift=(1.5, -1.0))
    res = unireg.register((fixed, aff), (moving, aff), model=tiny_registrar(2, 1.0), refine=2)
    paths = res.save(tmp_path / "out")
    assert paths["html"].is_file() and paths["qc"].is_file()
    assert "data:image/png;base64" in paths["html"].read_text()


def test_report_fixture_keys_are_the_pipelines(result, tmp_path):
    """The HTML tests' synthetic report.json may only use keys a real registration writes."""
    from .reports.conftest import make_result_dir

    fake = json.loads((make_result_dir(tmp_path / "fake", 2) / "report.json").read_text())
    real = result.report
    assert set(fake) <= set(real), set(fake) - set(real)
    assert set(fake["runtime_s"]) <= set(real["runtime_s"]), set(fake["runtime_s"]) - set(real["runtime_s"])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_writer_thread_leaves_no_partial_outputs(result, tmp_path, monkeypatch, threads):
    """The image and field files are written by worker threads (in line with one torch thread): an
    error in one still reaches the caller, after the others have finished, and nothing of this save
    is left behind."""
    import unireg.outputs as outputs

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert isinstance(outputs._writers(), outputs._InLine) == (threads == 1)

    def boom(path, *a, **k):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_displacement_field", boom)
    with pytest.raises(OSError, match="No space left"):
        result.save(tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_identity_affine_deformable_files_are_the_whole_maps(tmp_path, monkeypatch):
    """With no affine (identity) the ANTs split's deformable fields are the whole map's: the same
    bytes as warp.nii.gz (and inverse_warp.nii.gz when both images share a grid), not recomputed."""
    fs, fa = (40, 36), grid_affine((40, 36), (1.0, 1.2), rotation(2, 10)[:2, :2], (3.0, -4.0))
    f, _ = phantom(fs, fa, (3.0, -4.0))
    m, _ = phantom(fs, fa, (3.0, -4.0), shift=(1.0, 0.5))
    res = api.register((f, fa), (m, fa), model=tiny_registrar(2, 1.0), refine=2, affine=False)
    assert np.array_equal(res.affine_matrix, np.eye(4))
    res.inverse_warp_mm  # noqa: B018 (computed once, for inverse_warp.nii.gz)

    def no_recompute(*a, **k):
        raise AssertionError("the deformable part was recomputed")

    import unireg.outputs as outputs
    import unireg.pipeline as pipeline

    monkeypatch.setattr(outputs, "deformable_forward_mm", no_recompute)
    monkeypatch.setattr(pipeline, "displacement_on_grid", no_recompute)
    paths = res.save(tmp_path, qc=False, html=False)
    assert paths["deformable_warp"].read_bytes() == paths["warp"].read_bytes()
    assert paths["deformable_inverse_warp"].read_bytes() == paths["inverse_warp"].read_bytes()
    w = nib.load(paths["deformable_warp"]).get_fdata()
    assert np.abs(w).max() > 0.05  # a real deformation, not two empty files


def test_report_modules_are_prefetched_beside_a_3d_registration_only(monkeypatch):
    """A 2-D registration is ~1 s of small ops that would wait for the interpreter lock the import holds."""
    import threading

    from unireg import outputs

    started = []

    class Spy:
        def __init__(self, target=None, name=None, daemon=None):
            self.name = name

        def start(self):
            started.append(self.name)

    monkeypatch.setattr(threading, "Thread", Spy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    outputs.prefetch_report_modules(2)
    assert started == []
    outputs.prefetch_report_modules(3)
    assert started == ["unireg-prefetch"]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    outputs.prefetch_report_modules(3)
    assert started == ["unireg-prefetch"]  # one core: nothing beside the registration
