"""The verdict on one registration: did it fail, how sure are we, and why (from report.json alone).

Read by ``unireg register`` (summary line, exit status 3), ``unireg batch`` (summary.csv columns,
exit status 3) and the Python API (``result.report["verdict"]``).  Everything is read
defensively: a report without ``qc_score`` (``--no-qc``), without ``qc_components`` or without
``stages`` gives a verdict all the same.

A registration is judged failed when the failure score flags it (``qc_flag``), or when the warped
image is empty: the moving image then does not overlap the fixed one at all after alignment (e.g.
a 400 mm offset with ``--no-affine``), which no score is needed to see.
"""

from __future__ import annotations

import numpy as np

__all__ = ["judge", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_FLAGGED", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_FLAGGED = 3
EXIT_INTERRUPTED = 130

# thresholds for the human-readable reasons (the flag itself is qc_score >= QC_THRESHOLD)
SHIFT_RATIO_BAD = 0.85
MISMATCH_BAD = 0.5
FOLDED_BAD = 1.0


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def judge(report: dict, warped: np.ndarray | None = None) -> dict:
    """The verdict on one registration.

    Parameters
    ----------
    report : the registration's report (``report.json``): ``qc_score``, ``qc_flag``,
        ``qc_components``, ``folded_percent`` and ``stages`` are used when present.
    warped : optional warped image (any shape); all zeros means no overlap at all.

    Returns
    -------
    dict
        ``failed`` (bool), ``status`` (``"ok"``, ``"flagged"`` or ``"not scored"``), ``qc_score``
        (float or None), ``qc_flag`` (bool or None), ``reasons`` (list of str, empty when nothing
        is wrong) and ``notes`` (list of str: stages that were discarded, not failures by themselves).
    """
    score = _num(report.get("qc_score"))
    flag = report.get("qc_flag")
    flag = None if flag is None else bool(flag)
    comp_raw = report.get("qc_components")
    comp: dict = comp_raw if isinstance(comp_raw, dict) else {}
    reasons: list[str] = []
    empty = warped is not None and np.asarray(warped).size > 0 and not np.any(np.asarray(warped))
    if empty:
        reasons.append("the warped image is empty: after alignment the moving image does not overlap the fixed one "
                       "(check the images' world coordinates, or drop --no-affine)")
    sr = _num(comp.get("shift_ratio"))
    if sr is not None and sr >= SHIFT_RATIO_BAD:
        reasons.append(f"the alignment found matches no better than positions a few voxels away "
                       f"(shift ratio {sr:.2f}): a gross misalignment or unrelated images")
    mm = _num(comp.get("mismatch_fraction"))
    if mm is not None and mm >= MISMATCH_BAD:
        reasons.append(f"{100 * mm:.0f}% of the fixed foreground is badly matched")
    fold = _num(comp.get("folded_percent"))
    if fold is None:
        fold = _num(report.get("folded_percent"))
    if fold is not None and fold >= FOLDED_BAD:
        reasons.append(f"{fold:.1f}% of the voxels fold (det J <= 0)")
    if flag and not reasons:
        reasons.append(f"failure score {score:.2f} at or above the threshold {report.get('qc_threshold', 0.5)}")
    notes = []
    stages = report.get("stages")
    if isinstance(stages, dict):
        for name, st in stages.items():
            if isinstance(st, dict) and st.get("kept") is False:
                notes.append(f"stage {name} was discarded" + (f": {st['reason']}" if st.get("reason") else ""))
    notes += _noise_notes(report)
    failed = bool(flag) or empty
    nsr = _num(comp.get("nmi_shift_ratio"))
    thr = _num(report.get("qc_threshold"))
    if not failed and score is not None and thr is not None and score >= thr and nsr is not None:
        notes.append(f"the feature score is {score:.2f}, at or above {thr:g}, but the intensities' NMI peaks sharply "
                     f"at the found alignment (shift ratio {nsr:.2f}): not flagged")
    status = "flagged" if failed else ("not scored" if score is None else "ok")
    return {"failed": failed, "status": status, "qc_score": score, "qc_flag": flag,
            "reasons": reasons if failed else [], "notes": notes}


def _noise_notes(report: dict) -> list[str]:
    """A note for each image the registration smoothed as noisy (report ``noise``: :mod:`unireg.noise`)."""
    noisy = report.get("noise")
    notes = []
    for which, rec in (noisy.items() if isinstance(noisy, dict) else ()):
        if isinstance(rec, dict) and (_num(rec.get("sigma_vox")) or 0.0) > 0:
            snr = _num(rec.get("snr"))
            notes.append(f"the {which} image is noisy (SNR {'unknown' if snr is None else f'{snr:.1f}'}): smoothed "
                         f"by {rec['sigma_vox']:g} voxels for the comparisons (--no-denoise: not smoothed)")
    return notes


def describe(verdict: dict) -> str:
    """One line: ``FAILED (score 0.99): reason; reason`` / ``ok (score 0.01)`` / ``not scored``."""
    s = verdict.get("qc_score")
    sc = f" (failure score {s:.2f})" if s is not None else ""
    if verdict.get("failed"):
        return f"FAILED{sc}: " + "; ".join(verdict.get("reasons") or ["flagged"])
    if s is None:
        return "not scored (--no-qc)"
    return f"ok{sc}"
