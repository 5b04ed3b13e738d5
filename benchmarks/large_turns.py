"""Heads stored far off: the demo pair with the moving file's header turned by a random rotation.

    python benchmarks/large_turns.py [--pairs 6] [--methods unireg,ants] [--threads 2] [--out-dir DIR]

A scan can reach a registration turned far from the other: a head lying the other way round (prone against
supine), a specimen or an animal scanned on its side in a scanner built for people, a header written wrong by a
converter.  Each pair here is ``unireg.demo.make_demo_pair``'s (the 1 mm MNI T1 against a smoothly deformed,
T2-like, bias-corrupted copy, with both label maps) whose moving image and labels keep their voxels while the
file's affine turns them about the field of view's centre by a rotation drawn uniformly over all rotations (the
Haar measure: most are beyond 90 degrees) and shifts them by up to 15 mm.  The rotations come from a fixed seed
(``SEED``): the list is frozen, and nothing here was tuned to (the test's turns, 180 degrees about the vertical
and -100 about the left-right axis, are not in it).

Each method is the whole command in its own process (as ``held_out.py`` runs them): ``unireg register`` (defaults,
``--no-qc``) and ``held_out_peer.py ants`` (antspyx SyN-MI, default iterations: its initial transform aligns the
centres of mass; it has no rotation search).  Score: grey/white-matter Dice of the fixed labels against the moving
labels through each method's warp, against no registration (the labels read through their turned header onto the
fixed grid), with the turn's angle.  Writes ``large_turns.md`` / ``.csv`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from slice_pairs import (  # noqa: E402
    add_run_options,
    dice_gm_wm,
    median_seconds,
    methods_of,
    run_method,
    scored,
    write_results,
)

SEED = 20261130
SHIFT_MM = 15.0
FIELDS = ["case", "angle_deg", "method", "dice", "seconds", "status"]


def turn_list(n: int) -> list[dict]:
    """The frozen list: ``n`` rotations (a unit quaternion drawn uniformly) and shifts."""
    rng = np.random.default_rng(SEED)
    out = []
    for i in range(n):
        q = rng.normal(size=4)
        w, x, y, z = q / np.linalg.norm(q)
        rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        shift = rng.uniform(-SHIFT_MM, SHIFT_MM, size=3)
        angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
        out.append({"case": f"turn_{i:02d}_{angle:.0f}deg", "rot": rot, "shift": shift, "angle_deg": angle})
    return out


def write_pair(spec: dict, pair: dict, out: Path) -> dict[str, Path]:
    """The moving image and labels with their header turned by ``spec`` about the field of view's centre."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("moving", "moving_labels"):
        img = nib.load(str(pair[name]))
        a = np.asarray(img.affine, np.float64)
        c = a[:3, :3] @ ((np.array(img.shape[:3]) - 1) / 2) + a[:3, 3]
        turn = np.eye(4)
        turn[:3, :3] = spec["rot"]
        turn[:3, 3] = c - spec["rot"] @ c + spec["shift"]
        paths[name] = out / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), turn @ a, img.header), str(paths[name]))
    return paths


def labels_on_fixed(labels: Path, fixed: Path) -> np.ndarray:
    """A label map read through its own header onto the fixed grid (nearest neighbour): no registration."""
    import nibabel as nib

    from unireg.resample import nearest_labels

    lab, ref = nib.load(str(labels)), nib.load(str(fixed))
    return nearest_labels(np.asarray(lab.dataobj), lab.affine, ref.shape[:3], ref.affine, None)


def run_pair(spec: dict, pair: dict, args, work: Path) -> list[dict]:
    import nibabel as nib

    d = work / spec["case"]
    moved = write_pair(spec, pair, d)
    fixed_lab = np.asarray(nib.load(str(pair["fixed_labels"])).dataobj)
    base = {"case": spec["case"], "angle_deg": round(spec["angle_deg"], 1)}
    unmoved = labels_on_fixed(moved["moving_labels"], pair["fixed"])
    rows = [dict(base, method="none", dice=dice_gm_wm(fixed_lab, unmoved), seconds=0.0, status="ok")]
    for m in args.methods:
        rows.append(scored(base, fixed_lab, *run_method(m, {"fixed": pair["fixed"], **moved}, d, args)))
    return rows


def summarise(rows: list[dict], methods: list[str]) -> str:
    by = {(r["case"], r["method"]): r for r in rows}
    cases = list(dict.fromkeys(r["case"] for r in rows))
    head = ["case", "turn (deg)", "Dice none"] + [f"Dice {m}" for m in methods]
    if "unireg" in methods and "ants" in methods:
        head += ["UniReg - ANTs (pts)"]
    head += [f"s {m}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells_of(cs, label, angle):
        def mean(m):
            v = [by[(c, m)]["dice"] for c in cs if (c, m) in by and np.isfinite(by[(c, m)]["dice"])]
            return float(np.mean(v)) if v else float("nan")

        cells = [label, angle, f"{mean('none'):.3f}"] + [f"{mean(m):.3f}" for m in methods]
        if "unireg" in methods and "ants" in methods:
            cells.append(f"{100 * (mean('unireg') - mean('ants')):+.1f}")
        return cells + [median_seconds(by, cs, m) for m in methods]

    for c in cases:
        lines.append("| " + " | ".join(cells_of([c], c, f"{by[(c, 'none')]['angle_deg']:.1f}")) + " |")
    lines.append("| " + " | ".join(cells_of(cases, f"mean of {len(cases)} (median s)", "")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=6, help="number of turns (default 6)")
    add_run_options(p, threads=2, timeout=900.0, name="large_turns")
    args = p.parse_args(argv)
    args.methods = methods_of(p, args.methods)
    from unireg.demo import make_demo_pair

    work = args.work or Path(tempfile.mkdtemp(prefix="unireg_large_turns_"))
    made = make_demo_pair(work / "pair")
    pair = {"fixed": made["fixed"], "fixed_labels": made["fixed_labels"], "moving": made["moving"],
            "moving_labels": made["moving_labels"]}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []
    for i, spec in enumerate(turn_list(args.pairs)):
        got = run_pair(spec, pair, args, work)
        rows += got
        got_dice = {r["method"]: round(r["dice"], 4) for r in got}
        print(json.dumps(got_dice | {"case": spec["case"], "n": f"{i + 1}/{args.pairs}"}), flush=True)
    write_results(args, argv, "large_turns.py",
                  "Heads stored far off: the demo pair, the moving header turned at random",
                  "GM/WM Dice of the fixed labels against the moving labels through each method's warp; none: the "
                  "turned labels read onto the fixed grid.", rows, FIELDS, summarise(rows, args.methods), t0, load0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
