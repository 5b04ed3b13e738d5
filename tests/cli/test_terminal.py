"""The terminal tells the truth: verdict and exit status 3, progress lines, Ctrl-C, options as written.

Small 3-D phantoms and the tiny untrained registrar keep each run well under a second.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unireg.cli.main import app
from unireg.io.image import write_image

from ..synthetic_pairs import grid_affine, phantom, rotation, tiny_registrar

torch.set_num_threads(1)
CENTRE = np.array([4.0, -6.0, 10.0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("terminal")
    fs = (24, 26, 20)
    fa = grid_affine(fs, (1.2, 1.0, 1.5), rotation(2, 15), CENTRE)
    f, _ = phantom(fs, fa, CENTRE)
    m, _ = phantom(fs, fa, CENTRE, shift=(2.0, -1.0, 1.0))
    write_image(d / "fixed.nii.gz", f, fa)
    write_image(d / "moving.nii.gz", m, fa)
    far = fa.copy()
    far[0, 3] += 400.0  # the same image 400 mm away
    write_image(d / "far.nii.gz", m, far)
    write_image(d / "noise.nii.gz", np.random.default_rng(0).random(fs).astype(np.float32), fa)
    tiny_registrar(3, 1.5).save(d / "tiny.pt")
    return d


def _run(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def _register(data, moving, out, *extra):
    return _run("register", data / "fixed.nii.gz", data / moving, "--out", out, "--model", data / "tiny.pt",
                "--refine", 2, *extra)


def test_good_pair_exit_0_with_verdict(data, tmp_path):
    r = _register(data, "moving.nii.gz", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "verdict: ok (failure score" in r.stdout
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["verdict"]["failed"] is False and rep["verdict"]["status"] == "ok"


@pytest.mark.parametrize("moving,extra,why", [
    ("far.nii.gz", ["--no-affine"], "the warped image is empty"),
    ("noise.nii.gz", [], "shift ratio"),
])
def test_failed_registration_exit_3_with_verdict(data, tmp_path, moving, extra, why):
    out = tmp_path / "o"
    r = _register(data, moving, out, *extra)
    assert r.exit_code == 3, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("verdict:"))
    assert line.startswith("verdict: FAILED (failure score ") and why in r.stdout.replace("\n", " ")
    assert float(line.split("failure score ")[1].split(")")[0]) >= 0.9
    assert "flagged as failed" in r.stderr
    # outputs are still written, for inspection, and report.json carries the verdict
    rep = json.loads((out / "report.json").read_text())
    assert (out / "warped.nii.gz").is_file() and rep["qc_flag"] is True and rep["verdict"]["failed"] is True
    # --allow-flagged: same verdict, exit 0
    r2 = _register(data, moving, tmp_path / "o2", *extra, "--allow-flagged")
    assert r2.exit_code == 0 and "verdict: FAILED" in r2.stdout


def test_batch_with_one_broken_pair_exits_3_and_says_which(data, tmp_path):
    man = tmp_path / "m.csv"
    man.write_text(f"id,fixed,moving\ngood,{data / 'fixed.nii.gz'},{data / 'moving.nii.gz'}\n"
                   f"broken,{data / 'fixed.nii.gz'},{data / 'noise.nii.gz'}\n")
    out = tmp_path / "b"
    r = _run("batch", man, "--out", out, "--model", data / "tiny.pt", "--refine", 2, "--no-progress", "--no-qc")
    assert r.exit_code == 3, r.output
    assert "1 ok, 1 flagged as failed, 0 failed with an error (flagged: broken)" in r.stderr
    rows = {row["id"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["broken"]["qc_flag"] == "true" and rows["broken"]["verdict"] == "flagged"
    assert "shift ratio" in rows["broken"]["reason"] and float(rows["broken"]["qc_score"]) > 0.5
    assert rows["good"]["qc_flag"] == "false" and rows["good"]["verdict"] == "ok"
    r = _run("batch", man, "--out", out, "--model", data / "tiny.pt", "--refine", 2, "--no-progress", "--no-qc",
             "--allow-flagged")
    assert r.exit_code == 0, r.output


def test_progress_lines_when_not_a_terminal(data, tmp_path):
    r = _register(data, "moving.nii.gz", tmp_path / "o")
    stages = [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith("stage=")]
    assert stages[:2] == ["stage=preprocess", "stage=affine"] and "stage=resample" in stages
    assert stages[-2:] == ["stage=write", "stage=done"]
    ts = [float(ln.split("t=")[1]) for ln in r.stdout.splitlines() if ln.startswith("stage=")]
    assert ts == sorted(ts)
    r = _register(data, "moving.nii.gz", tmp_path / "q", "--quiet")
    assert "stage=" not in r.stdout


def test_progress_rich_on_a_terminal():
    import io

    from unireg.cli.progress import StageProgress

    buf = io.StringIO()
    with StageProgress(stream=buf, rich=True) as p:
        p("affine")
        p("refine 4 mm")
    text = buf.getvalue()
    assert "affine pre-alignment" in text and "instance optimisation (4 mm)" in text and "stage=" not in text


def test_ctrl_c_says_what_was_kept_and_leaves_no_empty_folder(data, tmp_path, monkeypatch):
    from unireg import api

    def interrupted(*a, progress=None, **k):
        progress("preprocess")
        progress("affine")
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "register", interrupted)
    out = tmp_path / "new" / "run"
    r = _register(data, "moving.nii.gz", out)
    assert r.exit_code == 130
    assert "interrupted during affine: no outputs written; removed the empty folder" in r.stderr
    assert not (tmp_path / "new").exists()


def test_options_work_as_written(data, tmp_path):
    r = _register(data, "moving.nii.gz", tmp_path / "o", "--refine", -5)
    assert r.exit_code == 2 and not (tmp_path / "o").exists()
    r = _run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("unireg ")
    # --threads after the subcommand, like before it
    r = _run("register", data / "fixed.nii.gz", data / "moving.nii.gz", "--threads", 1, "--out", tmp_path / "t",
             "--model", data / "tiny.pt", "--refine", 1)
    assert r.exit_code == 0, r.output
    h = _run("register", "--help", env={"COLUMNS": "160"}).stdout
    assert "FIXED MOVING" in h and "{fixed}" not in h and "<bool>" not in h and "--no-affine " in h
    t = _run("train", "--help").stdout
    assert "--steps" in t and "optimiser steps" in t.lower()


def test_local_extractor_without_trained_model_warns(data, tmp_path):
    r = _run("register", data / "fixed.nii.gz", data / "moving.nii.gz", "--out", tmp_path / "o", "--extractor", "raw",
             "--refine", 1)
    assert r.exit_code in (0, 3), r.output
    assert "warning: no trained model for extractor 'raw'" in r.stderr and "refinement" in r.stderr


def test_imagenet_extractor_takes_weights(data, tmp_path):
    from ..features.test_imagenet import random_resnet18_state_dict

    r = _run("register", data / "fixed.nii.gz", data / "moving.nii.gz", "--out", tmp_path / "o",
             "--extractor", "imagenet", "--refine", 1)
    assert r.exit_code == 2 and "weights" in r.stderr and r.stderr.count("\n") == 1
    w = tmp_path / "resnet18.pth"
    torch.save(random_resnet18_state_dict(), w)
    r = _run("register", data / "fixed.nii.gz", data / "moving.nii.gz", "--out", tmp_path / "o",
             "--extractor", "imagenet", "--extractor-weights", w, "--refine", 1, "--no-qc")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["extractor"] == "imagenet"


def test_batch_manifest_takes_masks_and_initial_transform(data, tmp_path):
    from unireg.io.image import read_image
    from unireg.io.transform import write_affine

    f = read_image(data / "fixed.nii.gz")
    write_image(tmp_path / "mask.nii.gz", (f.data[0] > 0.1).astype(np.uint8), f.affine)
    t = np.eye(4)
    t[0, 3] = 400.0
    write_affine(tmp_path / "init.mat", t)
    man = tmp_path / "m.csv"
    man.write_text("id,fixed,moving,fixed_mask,moving_mask,initial_transform\n"
                   f"far,{data / 'fixed.nii.gz'},{data / 'far.nii.gz'},{tmp_path / 'mask.nii.gz'},,{tmp_path / 'init.mat'}\n")
    out = tmp_path / "b"
    r = _run("batch", man, "--out", out, "--model", data / "tiny.pt", "--refine", 1, "--no-progress", "--no-qc",
             "--no-affine")
    assert r.exit_code == 0, r.output  # the initial transform brings the 400 mm away pair into overlap
    rep = json.loads((out / "far" / "report.json").read_text())
    assert rep["fixed_mask"].endswith("mask.nii.gz") and rep["initial_transform"] is True
    assert np.allclose(rep["affine_matrix"], t, atol=1e-6)


def test_batch_ctrl_c_keeps_finished_pairs_and_removes_the_one_in_progress(data, tmp_path, monkeypatch):
    import unireg.batch as batch_mod

    real = batch_mod._register_pair
    calls = []

    def second_pair_interrupted(pair, pair_dir, *a, **k):
        calls.append(pair.id)
        if len(calls) == 2:
            (pair_dir / "warped.nii.gz").write_bytes(b"half")  # a half-written output
            raise KeyboardInterrupt
        return real(pair, pair_dir, *a, **k)

    monkeypatch.setattr(batch_mod, "_register_pair", second_pair_interrupted)
    man = tmp_path / "m.csv"
    man.write_text(f"id,fixed,moving\na,{data / 'fixed.nii.gz'},{data / 'moving.nii.gz'}\n"
                   f"b,{data / 'fixed.nii.gz'},{data / 'moving.nii.gz'}\n")
    out = tmp_path / "b"
    r = _run("batch", man, "--out", out, "--model", data / "tiny.pt", "--refine", 1, "--no-progress", "--no-qc")
    assert r.exit_code == 130
    assert "interrupted after 1 pair(s); finished pairs are kept" in r.stderr
    assert (out / "a" / ".done").is_file() and not (out / "b").exists()
