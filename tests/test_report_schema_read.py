"""read_report: the one reader of report.json (unireg report / report.html use it)."""

from __future__ import annotations

import json

import pytest

from unireg.errors import UniRegError
from unireg.report_schema import REPORT_FORMAT, read_report


def test_read_report_accepts_current_and_legacy_and_refuses_newer(tmp_path):
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"format_version": REPORT_FORMAT, "fixed": "f.nii.gz"}))
    assert read_report(p)["fixed"] == "f.nii.gz"
    p.write_text(json.dumps({"fixed": "f.nii.gz"}))  # written before format versions
    assert read_report(p)["fixed"] == "f.nii.gz"
    p.write_text(json.dumps({"format_version": REPORT_FORMAT + 1}))
    with pytest.raises(UniRegError, match="newer than this UniReg reads"):
        read_report(p)
    p.write_text("[1, 2]")
    with pytest.raises(UniRegError, match="not a JSON object"):
        read_report(p)
