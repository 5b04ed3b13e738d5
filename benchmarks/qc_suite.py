"""How often the failure flag fires on the held-out suite's registrations, by anatomy, family and grid.

    python benchmarks/qc_suite.py                          # 2-D, 20 pairs per family (100 pairs), ~4 min
    python benchmarks/qc_suite.py --pairs 40 --start 20    # pairs 20-39 of each family
    python benchmarks/qc_suite.py --dims 3 --pairs 2       # the 3-D default table's 10 pairs
    python benchmarks/qc_suite.py --whole-foreground       # scored as before informative_mask (comparison)

The flag (``unireg.evaluation.qc_score``) is calibrated by ``benchmarks/calibrate_qc.py`` on MNI slices
and blocks; this script measures it, without fitting anything, on the suite's other anatomy (label
and body phantoms) and grids.  Each pair is registered in-process by ``unireg.api.register`` with the
defaults (the score is the pipeline's own) and scored against the known true map
(``unireg.evaluation.suite.scoring``).  A registration counts as *not worse* when its Dice is at least
no registration's less 0.5 points and its end-point error at most no registration's; every flag on
such a registration is a false alarm.  Prints flagged / registrations per anatomy, family and grid,
then every flagged pair; ``--out`` writes one JSON row per pair.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def run(dims, pairs: int, start: int, families, whole_foreground: bool) -> list[dict]:
    import numpy as np

    from unireg import api
    from unireg.evaluation import qc_score
    from unireg.evaluation.suite import scoring
    from unireg.evaluation.suite.cases import build_case, case_list

    if whole_foreground:  # the score as it was taken before informative_mask: the whole fixed foreground
        qc_score.informative_mask = lambda fixed_w, foreground, level=0.0: foreground
    rows = []
    t0 = time.perf_counter()
    specs = [s for s in case_list(dims=dims, pairs=pairs, families=families or None) if s.index >= start]
    for i, spec in enumerate(specs):
        case = build_case(spec)
        res = api.register(api.as_image(case["fixed"]), api.as_image(case["moving"]))
        got = scoring.score_map(case, res.warp_mm)
        none = scoring.score_map(case, np.zeros_like(case["true_warp_mm"]))
        rep = res.report
        row = {
            "case": spec.name,
            "dim": spec.ndim,
            "deformation": spec.deformation,
            "intensity": spec.intensity,
            "anatomy": spec.anatomy,
            "grid": spec.grid,
            "dice": round(got["dice"], 4),
            "dice_none": round(none["dice"], 4),
            "epe_mm": round(got["epe_mm"], 3),
            "epe_none_mm": round(none["epe_mm"], 3),
            "not_worse": bool(got["dice"] >= none["dice"] - 0.005 and got["epe_mm"] <= none["epe_mm"] + 1e-6),
            "qc_score": rep["qc_score"],
            "qc_flag": bool(rep["qc_flag"]),
            **{k: rep["qc_components"].get(k) for k in ("shift_ratio", "mismatch_fraction", "mind_distance",
                                                          "nmi_shift_ratio")},
        }
        rows.append(row)
        print(f"  [{i + 1}/{len(specs)}] {spec.name}: score {row['qc_score']:.3f}"
              f"{' FLAGGED' if row['qc_flag'] else ''} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def summarise(rows: list[dict]) -> str:
    lines = []
    for key in ("anatomy", "deformation", "intensity", "grid"):
        counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
        for r in rows:
            c = counts[r[key]]
            c[0] += r["qc_flag"]
            c[1] += 1
            c[2] += r["qc_flag"] and r["not_worse"]
            c[3] += r["not_worse"]
        parts = [f"{k} {c[0]}/{c[1]} (false alarms {c[2]}/{c[3]})" for k, c in sorted(counts.items())]
        lines.append(f"by {key}: " + ", ".join(parts))
    flagged = sum(r["qc_flag"] for r in rows)
    false = sum(r["qc_flag"] and r["not_worse"] for r in rows)
    good = sum(r["not_worse"] for r in rows)
    lines.insert(0, f"flagged {flagged}/{len(rows)} registrations; on those not worse than no registration "
                    f"{false}/{good}; on those worse {flagged - false}/{len(rows) - good}")
    lines.append("flagged pairs (Dice none -> UniReg, EPE mm none -> UniReg, score):")
    for r in rows:
        if r["qc_flag"]:
            lines.append(f"  {r['case']}: {r['dice_none']:.3f} -> {r['dice']:.3f}, {r['epe_none_mm']:.2f} -> "
                         f"{r['epe_mm']:.2f}, {r['qc_score']:.3f}{'' if r['not_worse'] else '  (worse)'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="2", help="comma list of 2 and/or 3")
    p.add_argument("--pairs", type=int, default=20, help="pairs per deformation family (index < PAIRS)")
    p.add_argument("--start", type=int, default=0, help="only pairs with index >= START")
    p.add_argument("--families", default="", help="comma list of family names of any kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--whole-foreground", action="store_true", help="score over the whole fixed foreground")
    p.add_argument("--out", type=Path, default=None, help="JSON rows")
    a = p.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0]
    rows = run(tuple(int(d) for d in a.dims.split(",")), a.pairs, a.start,
               [f for f in a.families.split(",") if f], a.whole_foreground)
    print(summarise(rows))
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}, {a.threads} thread(s)")
    if a.out is not None:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
