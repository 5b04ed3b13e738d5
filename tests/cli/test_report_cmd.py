"""``unireg report DIR`` rebuilds DIR/report.html; bad folders give a one-line error."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unireg.cli.main import app

from ..reports.conftest import make_result_dir

CHROMIUM = "/usr/bin/chromium"


def _invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_report_rebuilds_page(tmp_path):
    out = make_result_dir(tmp_path / "r", 2, with_dice=False, qc_score=0.12, qc_flag=False)
    assert not (out / "report.html").exists()
    r = _invoke("report", str(out))
    assert r.exit_code == 0, r.output
    page = out / "report.html"
    assert page.is_file() and r.output.strip().endswith("report.html")
    text = page.read_text()
    assert 'id="qc-badge" class="ok"' in text and "failure score 0.12" in text
    # report.json changed (e.g. re-scored): the rebuilt page follows it, badge included
    rep = json.loads((out / "report.json").read_text())
    rep.update(qc_score=0.91, qc_flag=True, qc_threshold=0.5)
    (out / "report.json").write_text(json.dumps(rep))
    r = _invoke("report", str(out), "--max-px", "128")
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert 'id="qc-badge" class="flagged"' in text and "FLAGGED" in text and "0.91" in text
    assert 'data-key="qc_threshold"' in text
    assert sorted(p.name for p in out.glob("*.html")) == ["report.html"]


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "bad-json"])
def test_report_bad_dir_is_one_line_error(tmp_path, kind):
    d = tmp_path / "d"
    if kind == "file":
        d.write_text("x")
    elif kind == "empty":
        d.mkdir()
    elif kind == "bad-json":
        d.mkdir()
        (d / "report.json").write_text("{not json")
    r = _invoke("report", str(d))
    assert r.exit_code == 2
    err = r.stderr if hasattr(r, "stderr") else r.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("unireg: error: ") and str(d) in lines[0], err
    assert "Traceback" not in r.output
    # the folder is left exactly as it was: no report.html, no folder created, the file untouched
    if kind == "missing":
        assert not d.exists()
    elif kind == "file":
        assert d.is_file() and d.read_text() == "x"
    else:
        assert sorted(p.name for p in d.iterdir()) == ([] if kind == "empty" else ["report.json"])


def _chromium(url: str, tmp_path: Path) -> tuple[str, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=3000", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, "\n".join(ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln)


@pytest.mark.usefixtures("chromium")
def test_rebuilt_page_loads_in_headless_chromium(tmp_path):
    out = make_result_dir(tmp_path / "r", 3, qc_score=0.8, qc_flag=True)
    assert _invoke("report", str(out)).exit_code == 0
    dom, console = _chromium((out / "report.html").as_uri() + "?selftest=1", tmp_path)
    assert console == ""
    st = re.search(r'<div id="selftest"[^>]*>', dom).group(0)
    assert 'data-status="pass"' in st and 'data-errors="0"' in st, (st, dom[-500:])
    assert 'id="qc-badge" class="flagged"' in dom


def test_report_rebuilds_an_affine_only_result(tmp_path):
    """The det J of an affine-only result (a deformation the do-no-harm checks refused) is 1 in
    every voxel: the rebuild reads UniReg's own constant outputs (inputs to register are refused)."""
    import numpy as np

    from unireg.errors import UniRegError
    from unireg.io.image import read_image, write_image

    out = make_result_dir(tmp_path / "r", 3, with_dice=False)
    jac = read_image(out / "jacobian.nii.gz")
    write_image(out / "jacobian.nii.gz", np.ones(jac.spatial_shape, np.float32), jac.affine)
    r = _invoke("report", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file()
    with pytest.raises(UniRegError, match="constant"):
        read_image(out / "jacobian.nii.gz")
