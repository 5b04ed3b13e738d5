"""report.json follows its typed schema (unireg.report_schema): a real registration writes every
required key and nothing the schema does not name; renaming a key breaks this test, not a page."""

from __future__ import annotations

import json

import numpy as np

from unireg import api
from unireg.report_schema import REPORT_FORMAT, REPORT_KEYS, REQUIRED_KEYS, STAGE_NAMES

from .synthetic_pairs import phantom, tiny_registrar


def test_registration_report_matches_the_schema(tmp_path):
    a = np.diag([1.5, 1.5, 1.5, 1.0])
    f, fl = phantom((20, 22, 18), a, (0, 0, 0))
    m, ml = phantom((20, 22, 18), a, (0, 0, 0), shift=(1.5, 0, 0))
    res = api.register((f, a), (m, a), model=tiny_registrar(3, 1.5), labels=(ml.astype(np.int16), a),
                       fixed_labels=(fl.astype(np.int16), a), refine=2)
    res.save(tmp_path, qc=False, html=False)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert REQUIRED_KEYS <= set(rep), REQUIRED_KEYS - set(rep)
    assert set(rep) <= REPORT_KEYS, set(rep) - REPORT_KEYS
    assert rep["format_version"] == REPORT_FORMAT
    assert set(rep["stages"]) == set(STAGE_NAMES)
    assert all(set(v) == {"kept", "reason"} for v in rep["stages"].values())
