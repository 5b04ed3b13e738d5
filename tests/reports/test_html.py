import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unireg.reports.html import build_index, build_report

from .conftest import make_result_dir

_IMG = re.compile(r'src="(data:image/png;base64,[^"]+)"')
CHROMIUM = "/usr/bin/chromium"


def _check_self_contained(text: str) -> list:
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:|#)[^"'\s>]*//""", text)
    assert 'src="/' not in text and "@import" not in text and "url(" not in text
    # every src is an embedded PNG that decodes
    srcs = re.findall(r'\ssrc="([^"]*)"', text)
    uris = _IMG.findall(text)
    assert srcs and len(srcs) == len(uris)
    from PIL import Image as PILImage

    sizes = []
    for u in uris:
        raw = base64.b64decode(u.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with PILImage.open(io.BytesIO(raw)) as im:
            im.load()
            sizes.append(im.size)
    return sizes


def test_build_report_3d(result_dir_3d):
    out = build_report(result_dir_3d)
    assert out == result_dir_3d / "report.html"
    assert sorted(p.name for p in result_dir_3d.glob("*.html")) == ["report.html"]
    text = out.read_text()
    sizes = _check_self_contained(text)
    assert max(max(s) for s in sizes) == 256
    for plane in ("sagittal", "coronal", "axial"):
        for kind in ("fixed-edges", "warped-edges", "checkerboard", "grid", "jacobian"):
            assert f'id="panel-{kind}-{plane}"' in text
        assert f'id="flicker-{plane}"' in text
    for i in ('id="flicker"', 'id="flicker-toggle"', 'id="flicker-auto"', 'id="metrics"', 'id="metrics-table"',
              'id="dice-table"', 'id="qc-badge"', 'class="panel"'):
        assert i in text
    assert text.count('class="panel"') == 15
    # every figure of report.json is in the metrics table
    report = json.loads((result_dir_3d / "report.json").read_text())
    for key in ("runtime_s.total", "runtime_s.network", "folded_percent", "sdlogj", "extractor", "model",
                "versions.torch", "qc_score", "qc_flag", "dice.mean", "dice_before.mean"):
        assert f'data-key="{key}"' in text
    assert report["model"] in text
    assert 'data-label="1"' in text and 'data-label="mean"' in text
    # the 2.5 mm axis keeps its physical aspect: sagittal picture is (z*2.5) tall, (y*1.2) wide
    m = re.search(r'id="panel-grid-sagittal"[^>]*><img src="[^"]*" width="(\d+)" height="(\d+)"', text)
    w, h = int(m.group(1)), int(m.group(2))
    assert h / w == pytest.approx((12 * 2.5) / (20 * 1.2), rel=0.02)


def test_before_picture_comes_from_the_qc_routine(result_dir_3d, monkeypatch):
    """report.html's "moving (before)" view and qc.png's come from one routine, qc.before_image."""
    from unireg.reports import html as html_mod

    calls = []
    real = html_mod.before_image
    monkeypatch.setattr(html_mod, "before_image", lambda *a: calls.append(a) or real(*a))
    build_report(result_dir_3d)
    assert len(calls) == 1
    given = np.zeros((24, 20, 12), np.float32)
    build_report(result_dir_3d, preloaded={"before": given})  # what outputs.save_result passes
    assert len(calls) == 1


def test_build_report_2d_and_missing_inputs(result_dir_2d):
    text = build_report(result_dir_2d).read_text()
    _check_self_contained(text)
    assert 'id="panel-jacobian-plane"' in text and 'id="flicker-plane"' in text
    assert 'id="dice-table"' not in text
    assert 'id="qc-badge" class="unknown"' in text
    # moving and jacobian gone: still a report, with notes; det J recomputed from the warp
    (result_dir_2d / "jacobian.nii.gz").unlink()
    rep = json.loads((result_dir_2d / "report.json").read_text())
    os.unlink(rep["moving"])
    text = build_report(result_dir_2d).read_text()
    _check_self_contained(text)
    assert 'id="warnings"' in text and 'id="flicker"' not in text
    assert 'id="panel-jacobian-plane"' in text


def test_build_report_needs_report_json(tmp_path):
    from unireg.errors import UniRegError

    with pytest.raises(UniRegError, match="report.json"):
        build_report(tmp_path)


def _rows():
    return [
        {"id": "p-good", "dir": "p-good", "dice": 0.9, "folded_percent": 0.0, "runtime_s": 3.1,
         "qc_score": 0.1, "qc_flag": False, "status": "ok", "error": None},
        {"id": "p-bad", "dir": "p-bad", "dice": 0.5, "folded_percent": 1.5, "runtime_s": {"total": 2.0},
         "qc_score": 0.9, "qc_flag": True, "status": "ok", "error": None},
        {"id": "p-unscored", "dir": "p-unscored", "dice": None, "folded_percent": 0.2, "runtime_s": 4.0,
         "qc_score": None, "qc_flag": None, "status": "ok", "error": None},
        {"id": "p-failed", "dir": "p-failed", "dice": None, "folded_percent": None, "runtime_s": 0.5,
         "qc_score": None, "qc_flag": None, "status": "failed", "error": "moving.nii.gz: file not found <x>"},
        {"id": "p-mid", "dir": "p-mid", "dice": 0.7, "folded_percent": 0.1, "runtime_s": 3.5,
         "qc_score": 0.5, "qc_flag": False, "status": "ok", "error": None},
    ]


def _row_order(text):
    return re.findall(r'<tr class="pair [a-z]+" data-id="([^"]+)"', text)


def test_build_index_sorted_worst_first(tmp_path):
    batch = tmp_path / "batch"
    make_result_dir(tmp_path / "src", 3)
    shutil.copytree(tmp_path / "src" / "out", batch / "p-good")
    out = build_index(batch, _rows())
    assert out == batch / "index.html"
    text = out.read_text()
    assert _row_order(text) == ["p-failed", "p-bad", "p-mid", "p-good", "p-unscored"]
    sizes = _check_self_contained(text)
    assert len(sizes) == 1 and max(sizes[0]) == 96  # p-good's thumbnail
    assert 'href="p-good/report.html"' in text
    assert "file not found &lt;x&gt;" in text  # failed pairs show their (escaped) error
    assert text.count("<th ") == 8


def _chromium(url: str, tmp_path: Path) -> tuple[str, str]:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return r.stdout, "\n".join(console)


@pytest.mark.usefixtures("chromium")
def test_report_and_index_in_headless_chromium(tmp_path, result_dir_3d):
    report = build_report(result_dir_3d)
    dom, console = _chromium(report.as_uri() + "?selftest=1", tmp_path)
    assert console == ""
    st = re.search(r'<div id="selftest"[^>]*>', dom).group(0)
    assert 'data-status="pass"' in st and 'data-errors="0"' in st, (st, dom[-500:])
    assert 'data-images="21"' in st  # 3 planes x (5 panels + 2 flicker frames)
    assert 'id="flicker" class="show-after"' in dom or 'aria-pressed="true"' in dom

    index = build_index(tmp_path / "batch", _rows())
    dom, console = _chromium(index.as_uri(), tmp_path)
    assert console == ""
    assert 'data-sorted="score:desc"' in dom
    assert _row_order(dom) == ["p-failed", "p-bad", "p-mid", "p-good", "p-unscored"]
    dom, console = _chromium(index.as_uri() + "?sort=dice&order=asc", tmp_path)
    assert console == "" and 'data-sorted="dice:asc"' in dom
    assert _row_order(dom)[:3] == ["p-bad", "p-mid", "p-good"]  # unknown Dice last
    assert re.search(r'<div id="selftest" data-status="pass" data-errors="0"', dom)


@pytest.mark.parametrize(("score", "flag", "vouched"), [(0.87, False, True), (0.3, False, False), (0.87, True, False)])
def test_badge_says_when_the_intensities_vouched_for_a_high_score(tmp_path, score, flag, vouched):
    out = make_result_dir(tmp_path / "r", 2, with_dice=False, qc_score=score, qc_flag=flag)
    rep = json.loads((out / "report.json").read_text())
    rep["qc_threshold"] = 0.5
    (out / "report.json").write_text(json.dumps(rep))
    badge = re.search(r'<span id="qc-badge"[^>]*>([^<]*)</span>', build_report(out).read_text()).group(1)
    assert badge.startswith("FLAGGED" if flag else "passed QC"), badge
    assert ("vouches for the alignment" in badge) is vouched, badge
