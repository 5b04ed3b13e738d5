"""In-process A/B of one setting of the registration on the frozen held-out suite (UniReg only).

    python benchmarks/suite_ab.py --dims 3 --pairs 8 --families smooth,bspline,radial,affine \\
        --set "unireg.stages.affine.MI_LEVELS={2: (), 3: ()}"

Runs the default registration (``unireg.api.register``; ``--fast``: its fast mode) on each pair of the
suite twice, as the code stands (A) and with each ``--set MODULE.NAME=VALUE`` applied (B, a Python
literal assigned to that module attribute), and prints one JSON line per pair and run, then per deformation family and overall: mean
Dice, end-point error (mm) against the known map, the same for the affine stage alone (its matrix
against the known map inside the object), pairs below no registration, seconds.  For quick questions
before a change is run against the peers with ``benchmarks/held_out.py`` (which runs the whole CLI and
ANTs/elastix); the two give the same Dice per pair.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import time
from collections import defaultdict

import numpy as np
import torch


def _apply(sets: list[str]) -> list[tuple[object, str, object]]:
    """Assign each ``MODULE.NAME=VALUE``; returns what to restore."""
    undo = []
    for item in sets:
        target, value = item.split("=", 1)
        mod_name, attr = target.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        undo.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, ast.literal_eval(value.strip()))
    return undo


def _run_pair(case: dict, fast: bool = False) -> dict:
    from unireg import api
    from unireg.evaluation.suite import scoring
    from unireg.spatial.frames import affine_nd

    img, aff = case["fixed"]
    nd = img.ndim
    inside = case["mask"]
    a = affine_nd(np.asarray(aff, dtype=np.float64), nd)  # a 2-D image's 4x4 -> 3x3
    pts = np.argwhere(inside) @ a[:nd, :nd].T + a[:nd, nd]
    true = np.stack([case["true_warp_mm"][k][inside] for k in range(nd)], 1)
    t = time.perf_counter()
    r = api.register(api.as_image(case["fixed"]), api.as_image(case["moving"]), qc=False, fast=fast)
    sec = time.perf_counter() - t
    m = affine_nd(np.asarray(r.affine_matrix, dtype=np.float64), nd)
    aff_epe = float(np.linalg.norm(pts @ m[:nd, :nd].T + m[:nd, nd] - pts - true, axis=1).mean())
    got = scoring.score_map(case, r.warp_mm)
    none = scoring.score_map(case, np.zeros_like(case["true_warp_mm"]))
    return {
        "dice": round(float(got["dice"]), 4),
        "none": round(float(none["dice"]), 4),
        "epe": round(float(got["epe_mm"]), 3),
        "affine_epe": round(aff_epe, 3),
        "s": round(sec, 1),
        "affine": r.report["stages"]["affine"]["kept"],
        "affine_reason": r.report["stages"]["affine"]["reason"],
    }


def main(argv=None) -> None:
    from unireg.evaluation.suite.cases import build_case, case_list

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, choices=(2, 3), default=3)
    p.add_argument("--pairs", type=int, default=2, help="pairs per deformation family (indices below this)")
    p.add_argument("--start", type=int, default=0, help="first pair index")
    p.add_argument("--families", default=None, help="comma list of suite families (any kind)")
    p.add_argument("--names", default=None, help="comma list of substrings of pair names to keep")
    p.add_argument("--set", dest="sets", action="append", default=[], help="MODULE.NAME=VALUE for run B")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="both runs with --fast (api.register(fast=True))")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = case_list(dims=(args.dims,), pairs=args.pairs, families=args.families.split(",") if args.families else None)
    specs = [s for s in specs if s.index >= args.start]
    if args.names:
        specs = [s for s in specs if any(n in s.name for n in args.names.split(","))]
    runs = {"A": [], "B": []} if args.sets else {"A": []}
    for spec in specs:
        case = build_case(spec)
        for run in runs:
            undo = _apply(args.sets) if run == "B" else []
            try:
                row = {"run": run, "case": spec.name, **_run_pair(case, fast=args.fast)}
            finally:
                for mod, attr, old in undo:
                    setattr(mod, attr, old)
            runs[run].append(row)
            print(json.dumps(row), flush=True)
    for run, rows in runs.items():
        fams = defaultdict(list)
        for r in rows:
            fams[r["case"].split("_")[1]].append(r)
            fams["all"].append(r)
        print(f"run {run}" + (f" ({'; '.join(args.sets)})" if run == "B" else " (as the code stands)"))
        for fam, rs in fams.items():
            mean = {k: float(np.mean([r[k] for r in rs])) for k in ("dice", "epe", "affine_epe", "s")}
            below = sum(r["dice"] < r["none"] - 1e-4 for r in rs)
            print(
                f"  {fam:8s} n={len(rs):3d}  Dice {mean['dice']:.4f}  EPE {mean['epe']:.3f} mm  affine alone "
                f"{mean['affine_epe']:.3f} mm  below none {below}  {mean['s']:.1f} s"
            )


if __name__ == "__main__":
    main()
