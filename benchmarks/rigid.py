"""Rigid and affine registration (``unireg register --transform rigid|affine``) against ANTs, on pairs whose
true map is a known rigid motion.

    python benchmarks/rigid.py [--dims 2,3] [--pairs 10] [--threads 2] [--methods none,unireg,ants]
                               [--transforms rigid,affine] [--out FILE.md]

Each pair: a fixed image, one of

- the MNI T1 at 1 mm and the suite's body and label phantoms (``unireg.evaluation.suite.phantoms``);
- real scans of other scanners (``benchmarks/real_scans.py``'s sources: dipy's b=0 volume at 4x4x5 mm and
  nibabel's EPI slab in 3-D, a T1 slice and an EPI slice in 2-D),

and a moving copy rendered through a known rigid map (a rotation of 3-25 degrees, about a random axis in
3-D, and a translation of 3-20 mm), with one of the suite's intensity maps (T2-, PD-, FLAIR-, CT-like,
inverted, gamma, piecewise), on one of its moving grids (native, anisotropic, oblique, cropped), with a bias
field and noise (``unireg.evaluation.suite.cases.build_case``).  The list is frozen (``RIGID_SEED``); it was
drawn for this benchmark and nothing was tuned to it.

Scored: the distance (mm) between where the estimated and the true map send each voxel of the fixed object
(its labels; up to 50 000 voxels), mean and largest; and which UniReg results its failure flag marks (the
exit status 3 of ``unireg register``), with their error.  Methods, on the same arrays in this process: ``none``;
UniReg ``api.register(transform=...)`` (defaults otherwise); ANTs ``ants.registration(type_of_transform=
"Rigid" | "Affine")`` (antspyx defaults: Mattes MI, its iterations and shrink factors), its ``.mat`` read as
UniReg reads an ``--initial-transform``.  Seconds: the registration call alone, ``--threads`` threads each
(torch for UniReg, ITK for ANTs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RIGID_SEED = 20261129  # frozen: changing it changes every pair
INDEX0 = 900  # case indices the held-out suite and real_scans.py never use (their intensity/grid draws)
ANATOMY = {3: ("mni", "b0", "body", "epi", "labels"), 2: ("mni", "t1_slice", "body", "epi_slice", "labels")}
REAL = {"b0", "epi", "t1_slice", "epi_slice"}
ROTATION_DEG = (3.0, 25.0)
TRANSLATION_MM = (3.0, 20.0)
POINTS = 50_000


def rigid_map(nd: int, index: int, centre: np.ndarray):
    """A rigid fixed -> moving world map about ``centre`` and its description."""
    from scipy.spatial.transform import Rotation

    from unireg.evaluation.suite.deformations import TrueMap

    rng = np.random.default_rng([RIGID_SEED, nd, index])
    deg = float(rng.uniform(*ROTATION_DEG)) * float(rng.choice([-1.0, 1.0]))
    if nd == 3:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        rot = Rotation.from_rotvec(np.deg2rad(deg) * axis).as_matrix()
    else:
        c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
        rot, axis = np.array([[c, -s], [s, c]]), np.array([0.0, 0.0, 1.0])
    t = rng.normal(size=nd)
    t = t / np.linalg.norm(t) * rng.uniform(*TRANSLATION_MM)
    m = np.eye(nd + 1)
    m[:nd, :nd] = rot
    m[:nd, nd] = centre + t - rot @ centre
    tmap = TrueMap.identity(nd)
    tmap.matrix = m
    info = {"deformation": "rigid", "rotation_deg": round(abs(deg), 2), "axis": np.round(axis, 3).tolist(),
            "translation_mm": np.round(t, 2).tolist()}
    return tmap, info


def cases(dims, pairs: int) -> list[dict]:
    """The frozen pairs, built in memory."""
    import real_scans

    from unireg.evaluation.suite.cases import GRIDS, INTENSITIES, CaseSpec, build_case
    from unireg.evaluation.suite.grids import Grid
    from unireg.evaluation.suite.phantoms import make_anatomy

    out = []
    for nd in dims:
        for i in range(pairs):
            index = INDEX0 + i
            name = ANATOMY[nd][i % len(ANATOMY[nd])]
            spec = CaseSpec(nd, index, "affine", INTENSITIES[(3 * i + nd) % len(INTENSITIES)],
                            GRIDS[(i + nd) % len(GRIDS)], "mni" if name in REAL else name)
            arng = np.random.default_rng([RIGID_SEED, nd, index, 1])
            anat = real_scans.anatomy(name, nd, arng) if name in REAL else make_anatomy(name, nd, arng)
            fixed = Grid(tuple(anat["image"].shape), anat["affine"])
            tmap, info = rigid_map(nd, index, fixed.centre_world())
            case = build_case(spec, anatomy=anat, deformation=(tmap, info))
            case["name"] = f"{nd}d_rigid_{i:02d}_{name}_{spec.intensity}_{spec.grid}"
            out.append(case)
    return out


def object_points(case: dict) -> np.ndarray:
    """World points (N, nd) of the fixed object's voxels (at most POINTS, evenly strided)."""
    from unireg.evaluation.suite.grids import voxel_to_world

    vox = np.argwhere(case["mask"]).astype(np.float64)
    vox = vox[:: max(1, len(vox) // POINTS)]
    return voxel_to_world(vox, case["fixed"][1])


def errors(case: dict, matrix: np.ndarray) -> tuple[float, float]:
    """(mean, largest) distance in mm between the fixed -> moving affine ``matrix`` and the true map."""
    from unireg.spatial.world import affine_nd

    nd = case["spec"].ndim
    x = object_points(case)
    m = affine_nd(np.asarray(matrix, dtype=np.float64), nd)
    est = x @ m[:nd, :nd].T + m[:nd, nd]
    d = np.linalg.norm(est - case["true_map"].forward(x), axis=1)
    return float(d.mean()), float(d.max())


def run_unireg(case: dict, transform: str) -> tuple[np.ndarray, float, dict]:
    from unireg import api

    t = time.perf_counter()
    r = api.register(case["fixed"], case["moving"], transform=transform)
    return r.affine_matrix, time.perf_counter() - t, {"qc_flag": r.report.get("qc_flag"),
                                                       "affine_kept": r.report["stages"]["affine"]["kept"]}


def run_ants(case: dict, transform: str) -> tuple[np.ndarray, float, dict]:
    import ants

    from unireg.io.transform import read_affine

    nd = case["spec"].ndim

    def to_ants(arr, aff):
        img = np.asarray(arr, dtype=np.float32)
        flip = np.diag([-1.0, -1.0, 1.0])[:nd, :nd]
        a = flip @ aff[:nd, :nd]
        sp = np.linalg.norm(a, axis=0)
        return ants.from_numpy(img, origin=list(flip @ aff[:nd, 3]), spacing=list(sp), direction=a / sp)

    f, m = to_ants(*case["fixed"]), to_ants(*case["moving"])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        reg = ants.registration(f, m, type_of_transform=transform.capitalize(), outprefix=f"{tmp}/r")
        secs = time.perf_counter() - t
        return read_affine(reg["fwdtransforms"][0], ndim=nd), secs, {}


def tables(rows: list[dict], dims, transforms) -> list[str]:
    """Markdown: one row per pair, the means per dimension and method, and UniReg against ANTs per transform."""
    lines: list[str] = []
    cols = [k for k in rows[0] if isinstance(rows[0][k], tuple)] if rows else []
    lines += ["| pair | rotation deg | " + " | ".join(f"{c} mean / max mm" for c in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['rotation_deg']} | "
                     + " | ".join(f"{r[c][0]:.2f} / {r[c][1]:.2f}" for c in cols) + " |")
    lines += ["", "| dim | method | mean error mm | largest error mm | worst pair's mean mm | median s |",
              "|---|---|---|---|---|---|"]
    for nd in dims:
        sel = [r for r in rows if r["dim"] == nd]
        for c in cols:
            secs = [r[c][2] for r in sel if len(r[c]) > 2]
            lines.append(f"| {nd}-D | {c} | {statistics.mean(r[c][0] for r in sel):.2f} | "
                         f"{max(r[c][1] for r in sel):.2f} | {max(r[c][0] for r in sel):.2f} | "
                         + (f"{statistics.median(secs):.1f}" if secs else "-") + " |")
    for tr in transforms:
        u = f"unireg {tr}"
        if u in cols:  # UniReg's failure flag (exit status 3) on these results, and how far off each flagged one is
            for nd in dims:
                sel = [r for r in rows if r["dim"] == nd]
                flagged = [f"{r['pair']} ({r[u][0]:.2f} mm)" for r in sel if r[u][3].get("qc_flag")]
                lines.append(f"\n{nd}-D {tr}: UniReg flagged {len(flagged)} of {len(sel)}"
                             + (f": {', '.join(flagged)}" if flagged else ""))
    for tr in transforms:
        u, n = f"unireg {tr}", f"ants {tr}"
        if u in cols and n in cols:
            for nd in dims:
                sel = [r for r in rows if r["dim"] == nd]
                mu, mn = statistics.mean(r[u][0] for r in sel), statistics.mean(r[n][0] for r in sel)
                tu, tn = statistics.median(r[u][2] for r in sel), statistics.median(r[n][2] for r in sel)
                lines.append(f"\n{nd}-D {tr}: UniReg mean error {mu:.2f} mm vs ANTs {mn:.2f} mm "
                             f"(difference {mu - mn:+.2f} mm, ratio {mu / max(mn, 1e-9):.2f}); median seconds "
                             f"{tu:.1f} vs {tn:.1f} (ANTs / UniReg {tn / max(tu, 1e-9):.2f}x)")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,3")
    ap.add_argument("--pairs", type=int, default=10, help="pairs per dimension")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="none,unireg,ants")
    ap.add_argument("--transforms", default="rigid,affine")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    a = ap.parse_args(argv)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    dims = [int(d) for d in a.dims.split(",")]
    methods = [m for m in a.methods.split(",") if m]
    transforms = [t for t in a.transforms.split(",") if t]
    lines = [f"`python benchmarks/rigid.py {' '.join(argv if argv is not None else sys.argv[1:])}`: load average "
             f"{os.getloadavg()[0]:.2f} at the start, {a.threads} thread(s) per method", ""]
    rows = []
    t_all = time.perf_counter()
    for case in cases(dims, a.pairs):
        row = {"pair": case["name"], "dim": case["spec"].ndim, "rotation_deg": case["meta"]["rotation_deg"]}
        if "none" in methods:
            row["none"] = errors(case, np.eye(4))
        for tr in transforms:
            for method, fn in (("unireg", run_unireg), ("ants", run_ants)):
                if method in methods:
                    mat, secs, extra = fn(case, tr)
                    row[f"{method} {tr}"] = (*errors(case, mat), secs, extra)
        rows.append(row)
        cells = [f"{k}: {v[0]:.2f}/{v[1]:.2f} mm" + (f" {v[2]:.1f} s" if len(v) > 2 else "")
                 for k, v in row.items() if isinstance(v, tuple)]
        print(f"{row['pair']} ({row['rotation_deg']} deg): " + "; ".join(cells), flush=True)
    lines += tables(rows, dims, transforms)
    lines.append(f"\n{len(rows)} pairs in {time.perf_counter() - t_all:.0f} s; load average "
                 f"{os.getloadavg()[0]:.2f} at the end")
    text = "\n".join(lines)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
