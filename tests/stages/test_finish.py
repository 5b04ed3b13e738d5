"""The finishing stages: the failure score computed beside the resampling gives the same report."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from unireg.stages import deformable, finish

from .test_device_residency import build_state


@pytest.fixture(scope="module")
def state():
    s = build_state()
    for stage in (
        deformable.features,
        deformable.network,
        deformable.refine,
        deformable.integrate,
        deformable.deformable_gate,
    ):
        stage(s)
    return s


def test_qc_beside_resample_is_qc_then_resample(state, monkeypatch):
    runs = {}
    real_qc = finish.qc
    for threads in (1, 2):
        s = copy.copy(state)
        s.outputs = {}
        s.timer = type(state.timer)(state.device)
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        seen = []
        monkeypatch.setattr(finish, "qc", lambda st, seen=seen, **k: (seen.append(k), real_qc(st, **k))[1])
        finish.qc_and_resample(s)
        runs[threads] = (s.qc, s.outputs, seen)
    (qc1, out1, seen1), (qc2, out2, seen2) = runs[1], runs[2]
    assert seen1 == [{}] and seen2 == [{"announce": False}]  # in line with one thread, a worker with two
    assert qc1 == qc2 and qc1["qc_score"] is not None
    assert np.array_equal(out1["warp_mm"], out2["warp_mm"]) and np.array_equal(out1["jacobian"], out2["jacobian"])
    assert np.array_equal(out1["warped"].data, out2["warped"].data)


def test_an_error_in_the_qc_worker_reaches_the_caller(state, monkeypatch):
    s = copy.copy(state)
    s.outputs = {}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)

    def boom(*a, **k):
        raise RuntimeError("qc failed")

    monkeypatch.setattr(finish, "qc", boom)
    with pytest.raises(RuntimeError, match="qc failed"):
        finish.qc_and_resample(s)


@pytest.mark.parametrize(("refine", "passes"), [(0, 3), (None, 1)])
def test_the_network_is_a_cascade_only_when_nothing_refines_after_it(monkeypatch, refine, passes):
    from unireg.models.registrar import Registrar

    s = build_state()
    s.opts.refine = refine
    s.model.trained = True
    seen = []
    real = Registrar.predict
    monkeypatch.setattr(
        Registrar, "predict", lambda self, *a, **k: (seen.append(k.get("passes")), real(self, *a, **k))[1]
    )
    deformable.features(s)
    deformable.network(s)
    assert seen == [passes]


def test_a_partial_field_of_view_is_scored_where_it_has_data():
    """The MNI T1 (2 mm, the whole head) against a real T1 of another subject that covers only the
    middle of the brain (nibabel's anatomical.nii: 66 x 82 x 50 mm around the ventricles).  The affine
    lands it on the ventricles; the failure score measured over the whole fixed head read the 92 %
    the moving image does not cover as mismatch (score 0.99, flagged: exit status 3 for a good
    registration).  Scored where the fixed head lands inside the moving field of view: 0.16, not
    flagged.  With ``finish.FOV_AWARE = False`` this test fails (checked)."""
    import nibabel

    from unireg import api
    from unireg.data.mni import load_mni

    sub = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not sub.exists():
        pytest.skip("nibabel's test data is not installed")
    mni = load_mni(2.0)
    res = api.register((mni["t1"].data[0].astype(np.float32), mni["t1"].affine), str(sub))
    assert res.report["stages"]["affine"]["kept"], res.report["stages"]["affine"]
    assert not res.report["qc_flag"], res.report["qc_components"]
    assert res.report["qc_score"] < 0.5, res.report["qc_components"]
