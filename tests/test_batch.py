"""``unireg batch``: manifest parsing, sharding, one-bad-pair tolerance, resume after a crash.

Tiny 3-D pairs (16x14x12 voxels) and a tiny untrained registrar on a 1.5 mm working grid,
``refine=2``, no affine, no QC, so that a pair costs well under a second.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unireg import batch as batch_mod
from unireg.batch import BatchOptions, InjectedCrash, Pair, pair_hash, read_manifest, run_batch, shard
from unireg.errors import UniRegError

torch.set_num_threads(1)

SHAPE = (16, 14, 12)
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])
OPTS = dict(refine=2, affine=False, qc=False)


def _blob(centre) -> np.ndarray:
    z = np.indices(SHAPE, dtype=np.float32)
    r2 = sum((z[k] - c) ** 2 for k, c in enumerate(centre)) / 12.0
    return (100.0 * np.exp(-r2) + 5.0 * (r2 < 2.0)).astype(np.float32)


def make_pairs(root: Path, n: int, *, labels: bool = True, extra_rows: list[str] = ()) -> Path:
    """``root/manifest.csv`` with ``n`` pairs (relative paths), plus any raw ``extra_rows``."""
    from unireg.io.image import write_image

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    c0 = [s / 2 for s in SHAPE]
    fixed = _blob(c0)
    write_image(data / "fixed.nii.gz", fixed, AFFINE)
    write_image(data / "fixed_labels.nii.gz", (fixed > 40).astype(np.uint8), AFFINE)
    rows = ["id,fixed,moving,labels,fixed_labels"]
    for i in range(n):
        rng = np.random.default_rng(i)
        m = _blob([c + rng.uniform(-1.5, 1.5) for c in c0])
        write_image(data / f"m{i}.nii.gz", m, AFFINE)
        if labels:
            write_image(data / f"m{i}_lab.nii.gz", (m > 40).astype(np.uint8), AFFINE)
            rows.append(f"p{i:02d},data/fixed.nii.gz,data/m{i}.nii.gz,data/m{i}_lab.nii.gz,data/fixed_labels.nii.gz")
        else:
            rows.append(f"p{i:02d},data/fixed.nii.gz,data/m{i}.nii.gz,,")
    rows.extend(extra_rows)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    from unireg.models.registrar import Registrar

    p = tmp_path_factory.mktemp("model") / "tiny3d.pt"
    Registrar(3, extractor="mind", working={"spacing": 1.5, "max_size": 24}).save(p)
    return p


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------- manifest
def test_manifest_relative_paths_default_ids_and_blank_lines(tmp_path):
    sub = tmp_path / "m"
    sub.mkdir()
    (sub / "manifest.csv").write_text("moving,fixed\n\nimgs/a.nii.gz,/abs/f.nii.gz\nimgs/b T1.nii.gz,f.nii.gz\n")
    pairs = read_manifest(sub / "manifest.csv")
    assert [q.id for q in pairs] == ["0000_a", "0001_b_T1"]
    assert pairs[0].moving == str(sub.resolve() / "imgs/a.nii.gz")
    assert pairs[0].fixed == "/abs/f.nii.gz"
    assert pairs[1].fixed == str(sub.resolve() / "f.nii.gz")
    assert pairs[0].labels is None and pairs[0].fixed_labels is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("fixed,labels\na,b\n", "moving"),
        ("fixed,moving,colour\na,b,c\n", "unknown manifest column"),
        ("fixed,moving\n", "no pairs"),
        ("fixed,moving,id\na,b,x\nc,d,x\n", "duplicate id"),
        ("fixed,moving,id\na,b,../evil\n", "invalid id"),
        ("fixed,moving,id\na,b,summary.csv\n", "invalid id"),
        ("fixed,moving\na,\n", "empty 'moving'"),
        ("fixed,moving\na,b,c\n", "more cells"),
    ],
)
def test_manifest_errors_name_the_manifest(tmp_path, text, words):
    m = tmp_path / "manifest.csv"
    m.write_text(text)
    with pytest.raises(UniRegError) as ei:
        read_manifest(m)
    assert str(m) in str(ei.value) and words in str(ei.value)
    assert "\n" not in str(ei.value)


def test_manifest_missing(tmp_path):
    with pytest.raises(UniRegError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


@settings(max_examples=15, deadline=None, database=None)
@given(n=st.integers(0, 60), world=st.integers(1, 9))
def test_shards_partition_the_manifest(n, world):
    pairs = [Pair(i, f"p{i}", "f", "m") for i in range(n)]
    shards = [shard(pairs, r, world) for r in range(world)]
    got = sorted(q.index for s in shards for q in s)
    assert got == list(range(n))
    for r, s in enumerate(shards):
        assert all(q.index % world == r for q in s)


def test_hash_depends_on_row_and_options():
    q = Pair(0, "a", "/f", "/m")
    h = pair_hash(q, BatchOptions())
    assert h == pair_hash(Pair(5, "a", "/f", "/m", line=9), BatchOptions())  # position does not matter
    assert h != pair_hash(Pair(0, "a", "/f", "/m2"), BatchOptions())
    assert h != pair_hash(q, BatchOptions(smoothness=2.0))
    assert h != pair_hash(q, BatchOptions(refine=3))
    assert h != pair_hash(q, BatchOptions(transform="rigid"))
    # an option left at its default does not enter the hash: runs from before it existed still resume
    assert "transform" not in BatchOptions().key() and BatchOptions(transform="affine").key()["transform"] == "affine"


# ------------------------------------------------------------------------------------- running
def test_batch_bad_pairs_do_not_stop_the_others(tmp_path, tiny_model_path, monkeypatch):
    from unireg import api

    m = make_pairs(tmp_path, 2, extra_rows=[
        "missing,data/fixed.nii.gz,data/nope.nii.gz,,",
        "corrupt,data/fixed.nii.gz,data/corrupt.nii.gz,,",
        "p_nolab,data/fixed.nii.gz,data/m0.nii.gz,,",
    ])
    (tmp_path / "data" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    loads = []
    real_load = api.load_registrar  # what api.load_model uses to read a checkpoint from disk
    monkeypatch.setattr(api, "load_registrar", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "out"
    rows = run_batch(m, out, BatchOptions(model=str(tiny_model_path), **OPTS), progress=False)
    assert len(loads) == 1  # the model is loaded once for the whole batch
    status = {r["id"]: r["status"] for r in rows}
    assert status == {"p00": "ok", "p01": "ok", "missing": "failed", "corrupt": "failed", "p_nolab": "ok"}
    summ = {r["id"]: r for r in _summary(out)}
    assert list(summ) == ["p00", "p01", "missing", "corrupt", "p_nolab"]  # manifest order
    assert "nope.nii.gz: file not found" in summ["missing"]["error"]
    assert "corrupt.nii.gz" in summ["corrupt"]["error"] and "\n" not in summ["corrupt"]["error"]
    assert float(summ["p00"]["dice_mean"]) > 0 and summ["p_nolab"]["dice_mean"] == ""
    for k in ("runtime_s", "folded_percent", "sdlogj"):
        float(summ["p00"][k])
    assert Path(summ["p00"]["out_dir"]) == (out / "p00").resolve()
    assert (out / "p00" / "warped.nii.gz").is_file() and (out / "p00" / ".done").is_file()
    assert not (out / "missing").exists() and not (out / "corrupt").exists()  # failures leave no folder
    assert (out / "index.html").is_file() and "p01" in (out / "index.html").read_text()
    # a rerun redoes nothing that is done and retries the failures
    before = {p: (out / p / "warp.nii.gz").stat().st_mtime_ns for p in ("p00", "p01", "p_nolab")}
    rows2 = run_batch(m, out, BatchOptions(model=str(tiny_model_path), **OPTS), progress=False)
    assert [r["resumed"] for r in rows2] == [True, True, False, False, True]
    assert before == {p: (out / p / "warp.nii.gz").stat().st_mtime_ns for p in before}
    again = {r["id"]: r for r in _summary(out)}
    for k in ("p00", "p01", "p_nolab"):  # rows of done pairs come back unchanged from their markers
        assert again[k] == summ[k]
    assert [again[k]["error"] for k in ("missing", "corrupt")] == [summ[k]["error"] for k in ("missing", "corrupt")]


def test_kill_and_resume_every_pair_done_exactly_once(tmp_path, tiny_model_path, monkeypatch):
    """The fast stand-in for killing a batch: an injected crash mid-pair (outputs written, no marker)."""
    m = make_pairs(tmp_path, 6, labels=False)
    out = tmp_path / "out"
    marked: list[str] = []
    real = batch_mod._write_marker
    monkeypatch.setattr(batch_mod, "_write_marker", lambda d, h, row: (marked.append(d.name), real(d, h, row)))
    opts = BatchOptions(model=str(tiny_model_path), **OPTS)
    with pytest.raises(InjectedCrash):
        run_batch(m, out, opts, progress=False, crash_after=2)
    assert marked == ["p00", "p01"]
    # the third pair is half-written: outputs there, no marker; it must not count as done
    assert (out / "p02" / "warped.nii.gz").is_file() and not (out / "p02" / ".done").exists()
    assert not (out / "summary.csv").exists()
    (out / "p02" / "warped.nii.gz").write_bytes(b"truncated")  # as if killed while writing
    rows = run_batch(m, out, opts, progress=False)
    assert sorted(marked) == [f"p{i:02d}" for i in range(6)]  # each pair finished exactly once
    assert [r["resumed"] for r in rows] == [True, True] + [False] * 4
    assert all(r["status"] == "ok" for r in _summary(out))
    from unireg.io.image import read_image

    assert read_image(out / "p02" / "warped.nii.gz").data.shape == (1, *SHAPE)  # redone, readable


def test_changed_options_redo_the_pair_and_foreign_folders_are_kept(tmp_path, tiny_model_path):
    m = make_pairs(tmp_path, 2, labels=False)
    out = tmp_path / "out"
    (out / "p01").mkdir(parents=True)
    (out / "p01" / "my_notes.txt").write_text("precious")
    run_batch(m, out, BatchOptions(model=str(tiny_model_path), **OPTS), progress=False)
    summ = {r["id"]: r for r in _summary(out)}
    assert summ["p00"]["status"] == "ok"
    assert summ["p01"]["status"] == "failed" and "did not write" in summ["p01"]["error"]
    assert (out / "p01" / "my_notes.txt").read_text() == "precious"
    old = json.loads((out / "p00" / ".done").read_text())["hash"]
    rows = run_batch(m, out, BatchOptions(model=str(tiny_model_path), smoothness=2.0, **OPTS), progress=False)
    assert rows[0]["resumed"] is False  # new options: redone
    assert json.loads((out / "p00" / ".done").read_text())["hash"] != old


def test_batch_cli_and_crash_env(tmp_path, tiny_model_path):
    from typer.testing import CliRunner

    from unireg.cli.main import app

    m = make_pairs(tmp_path, 3, labels=False, extra_rows=["gone,data/fixed.nii.gz,data/gone.nii.gz,,"])
    out = tmp_path / "out"
    args = ["batch", str(m), "--out", str(out), "--model", str(tiny_model_path), "--refine", "2", "--no-affine",
            "--no-qc", "--no-progress"]
    with pytest.raises(InjectedCrash):  # a BaseException: not caught by the CLI, like SIGKILL
        CliRunner().invoke(app, args, env={batch_mod.CRASH_ENV: "1"})
    assert (out / "p00" / ".done").is_file() and not (out / "p01" / ".done").exists()
    r = CliRunner().invoke(app, args, env={batch_mod.CRASH_ENV: ""})
    assert r.exit_code == 3, r.output  # one pair failed: said by the exit status, not only in summary.csv
    assert "3 ok, 0 flagged as failed, 1 failed with an error (errors: gone)" in r.stderr
    assert [row["status"] for row in _summary(out)] == ["ok", "ok", "ok", "failed"]
    # a bad manifest / bad --model: one line, exit 2
    r = CliRunner().invoke(app, ["batch", str(tmp_path / "none.csv"), "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "none.csv: manifest not found" in r.stderr
    r = CliRunner().invoke(app, ["batch", str(m), "--out", str(out), "--model", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "x.pt: model checkpoint not found" in r.stderr
    r = CliRunner().invoke(app, ["batch", str(m), "--out", str(out), "--transform", "similarity"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "unknown transform 'similarity'" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(app, ["batch", str(m), "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and "Traceback" not in r.output and str(blocker) in r.stderr


def test_merge_of_rank_files(tmp_path):
    pairs = [Pair(i, f"p{i}", "f", "m") for i in range(3)]
    rank_rows = {0: [{"id": "p0", "status": "ok", "runtime_s": 1.0}, {"id": "p2", "status": "ok"}],
                 1: [{"id": "p1", "status": "failed", "error": "x: file not found"}]}
    batch_mod._merge(tmp_path, pairs, rank_rows)
    assert [(r["id"], r["status"]) for r in _summary(tmp_path)] == [("p0", "ok"), ("p1", "failed"), ("p2", "ok")]
    batch_mod._merge(tmp_path, pairs, {0: rank_rows[0]})  # a rank that never reported
    assert _summary(tmp_path)[1]["error"].startswith("no result")


# ------------------------------------------------------------------------------------- torchrun
def _markers(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in out.glob("*/.done")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_processes_killed_midway_then_resumed(tmp_path, tiny_model_path):
    n = 20
    m = make_pairs(tmp_path, n, labels=False)
    out = tmp_path / "out"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "unireg.batch_main", str(m), "--out", str(out),
           "--model", str(tiny_model_path), "--refine", "2", "--no-affine", "--no-qc", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(batch_mod.CRASH_ENV, None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while len(_markers(out)) < 6 and time.time() - t0 < 300 and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun tree we started, mid-batch
    finally:
        proc.wait()
    done_before = _markers(out)
    assert 6 <= len(done_before) < n
    assert not (out / "summary.csv").exists()
    outputs_before = {k: (out / k / "warp.nii.gz").stat().st_mtime_ns for k in done_before}

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = _markers(out)
    assert sorted(after) == [f"p{i:02d}" for i in range(n)]
    # pairs finished before the kill were not redone (same marker, same files), the rest once each
    assert {k: after[k] for k in done_before} == done_before
    assert outputs_before == {k: (out / k / "warp.nii.gz").stat().st_mtime_ns for k in done_before}
    rows = _summary(out)
    assert [r["id"] for r in rows] == [f"p{i:02d}" for i in range(n)] and all(r["status"] == "ok" for r in rows)
    for rank in (0, 1):
        with open(out / f"summary.rank{rank}.csv") as f:
            ids = [row["id"] for row in csv.DictReader(f)]
        assert ids == [f"p{i:02d}" for i in range(rank, n, 2)]
    assert (out / "index.html").is_file()


def test_batch_transform_option_reaches_every_pair(tmp_path, tiny_model_path):
    """`unireg batch --transform affine`: every pair is registered by the affine stage alone (report.json)."""
    import json

    from typer.testing import CliRunner

    from unireg.cli.main import app

    m = make_pairs(tmp_path, 2, labels=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["batch", str(m), "--out", str(out), "--model", str(tiny_model_path), "--no-qc",
                                 "--no-progress", "--transform", "affine", "--allow-flagged"])
    assert r.exit_code == 0, r.output  # (16x14x12 voxels: the affine stage may refuse and the pair be flagged)
    for pid in ("p00", "p01"):
        rep = json.loads((out / pid / "report.json").read_text())
        assert rep["transform"] == "affine" and "network" not in rep["stages"], rep["stages"]
