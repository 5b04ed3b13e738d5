"""Real anatomical differences, no synthetic field: a 2-D MNI slice against a slice 3-5 mm away.

    python benchmarks/slice_pairs.py [--pairs 24] [--methods unireg,ants] [--threads 1] [--out-dir DIR]

Every pair of the held-out suite (``held_out.py``) is one image against a copy of itself moved by a known
map; real pairs (two subjects, two visits) differ in anatomy no smooth map explains.  Here the fixed image
is an axial 1 mm slice ``z`` of the MNI ICBM152 T1 and the moving image is the slice ``z + d`` (``d`` = +-3
or +-5 mm) of the same volume, in a contrast drawn from the suite's intensity families (the same T1, T2,
PD, FLAIR, CT-like, gamma, inverted, random non-monotonic piecewise-linear): gyri, sulci and ventricles
change shape and topology between the two, as between two subjects.  There is no true map, so the score is
what a user with real scans measures: grey/white-matter Dice between the fixed slice's labels and the moving
slice's labels carried by each method's warp (``warped_labels.nii.gz``, nearest neighbour), against no
registration.  The pairs come from a fixed seed (``SEED``): the list is frozen; nothing here is used in
training or tuned to (the session that wrote it measured the code before and after one change, then froze it).

Each method is the whole command in its own process (as in ``held_out.py``): ``unireg register FIXED MOVING
-o OUT --labels ML`` (defaults, ``--no-qc``), ``held_out_peer.py ants`` (antspyx SyN, default iterations;
CC for the same contrast, Mattes MI across contrasts).  Writes ``slice_pairs.md`` / ``.csv`` in ``--out-dir``:
per contrast family and overall, mean Dice of each method, UniReg - ANTs (points), pairs below no
registration, median whole-process seconds, with the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from held_out import PEER, UNIREG_CLI, child_env, run_child  # noqa: E402

SEED = 20261129
FAMILIES = ("same", "t2", "pd", "flair", "ct", "gamma", "inverted", "piecewise")
OFFSETS_MM = (-5, -3, 3, 5)
Z_RANGE = (55, 125)  # axial slices through the ventricles and the cortex above them
# --orientation: the slices' axis of the MNI volume and the range of their positions (voxels).  Coronal and
# sagittal pairs are written as scanners' tools write one slice of a volume, (X, 1, Z) and (1, Y, Z) files with
# the volume's geometry, which UniReg registers in their plane (unireg.io.slices); ANTs, which registers such a
# file as a 3-D volume one voxel thick, gets the same pixels as 2-D images.
ORIENTATIONS = {"axial": (2, Z_RANGE), "coronal": (1, (70, 160)), "sagittal": (0, (60, 85))}
METHODS = ("none", "unireg", "ants")
FIELDS = ["case", "family", "z", "d", "method", "dice", "seconds", "status"]


def pair_list(n: int, orientation: str = "axial") -> list[dict]:
    """The frozen list: ``n`` pairs, contrast families in turn (``z``: the slice's position along the
    orientation's axis, whatever it is)."""
    axis, positions = ORIENTATIONS[orientation]
    rng = np.random.default_rng(SEED)
    out = []
    tag = "" if orientation == "axial" else f"{orientation}_"
    for i in range(n):
        z = int(rng.integers(*positions))
        d = int(rng.choice(OFFSETS_MM))
        fam = FAMILIES[i % len(FAMILIES)]
        out.append({"case": f"slice_{tag}{i:02d}_z{z}_d{d:+d}_{fam}", "family": fam, "z": z, "d": d,
                    "map_seed": int(rng.integers(2**31)), "axis": axis})
    return out


def dice_gm_wm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice of labels 1 (GM) and 2 (WM)."""
    vals = []
    for k in (1, 2):
        x, y = a == k, b == k
        den = int(x.sum() + y.sum())
        vals.append(2.0 * float((x & y).sum()) / den if den else 1.0)
    return float(np.mean(vals))


def write_pair(spec: dict, out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The two slices (moving in its drawn contrast) and their label maps: axial ones as 2-D NIfTI files;
    coronal and sagittal ones as one-voxel-thick 3-D files with the volume's geometry (UniReg's inputs) and
    as 2-D NIfTI files of the same pixels (ANTs' inputs).  Returns (UniReg's paths, ANTs' paths)."""
    import nibabel as nib

    from unireg.data.mni import load_mni
    from unireg.evaluation.suite.intensity import apply_map, draw_intensity

    mni = load_mni(None)
    t1, lab, aff = mni["t1"].data[0], mni["labels"].data[0], np.asarray(mni["t1"].affine, np.float64)
    z, d, axis = spec["z"], spec["d"], spec.get("axis", 2)
    fixed, moving = np.take(t1, z, axis=axis), np.take(t1, z + d, axis=axis)
    if spec["family"] != "same":
        knots, _ = draw_intensity(spec["family"], np.random.default_rng(spec["map_seed"]))
        moving = apply_map(np.clip(moving / max(float(moving.max()), 1e-6), 0.0, 1.0), knots)
    out.mkdir(parents=True, exist_ok=True)
    flat: dict[str, Path] = {}
    thick: dict[str, Path] = {}
    for name, arr, k, dtype in (("fixed", fixed, z, np.float32), ("moving", moving, z + d, np.float32),
                                ("fixed_labels", np.take(lab, z, axis=axis), z, np.int16),
                                ("moving_labels", np.take(lab, z + d, axis=axis), z + d, np.int16)):
        arr = np.ascontiguousarray(arr).astype(dtype)
        flat[name] = out / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), str(flat[name]))  # the volume's x-y columns: a 2-D image
        if axis != 2:
            a = aff.copy()
            a[:3, 3] += aff[:3, axis] * k  # the slice's own position in the volume
            thick[name] = out / f"{name}_slice.nii.gz"
            nib.save(nib.Nifti1Image(np.expand_dims(arr, axis), a), str(thick[name]))
    return (thick or flat), flat


def run_pair(spec: dict, args, work: Path) -> list[dict]:
    import nibabel as nib

    d = work / spec["case"]
    uni_paths, ants_paths = write_pair(spec, d)
    paths = ants_paths  # 2-D files, for scoring
    fixed_lab = np.asarray(nib.load(str(paths["fixed_labels"])).dataobj)
    base = {k: spec[k] for k in ("case", "family", "z", "d")}
    rows = [dict(base, method="none", dice=dice_gm_wm(fixed_lab, np.asarray(nib.load(str(paths["moving_labels"])).dataobj)),
                 seconds=0.0, status="ok")]
    for m in args.methods:
        metric = "cc" if spec["family"] == "same" else "mattes"
        rows.append(scored(base, fixed_lab, *run_method(m, uni_paths if m == "unireg" else paths, d, args, metric)))
    return rows


def run_method(
    method: str, paths: dict[str, Path], work: Path, args, metric: str = "mattes", qc: bool = False, extra: str = "",
    name: str | None = None,
) -> tuple[dict, np.ndarray | None]:
    """``method``'s whole command (``unireg register`` with defaults and ``--no-qc`` plus ``args.unireg_args``, or
    ``held_out_peer.py ants`` with ``metric``) on ``paths`` (fixed, moving, moving_labels), writing into ``work/name``
    (``name``: the method's) and its log beside it, ``args.threads`` threads, ``args.timeout`` seconds: ``({method:
    name, seconds, dice (nan), status}, the warped labels or None if it failed)``.  UniReg with ``qc``: its failure
    flag computed (``--allow-flagged``) and returned as ``flagged``; ``extra``: more of its options."""
    import nibabel as nib

    name = name or method
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    if method == "unireg":
        cmd = [sys.executable, "-c", UNIREG_CLI, "register", str(paths["fixed"]), str(paths["moving"]), "-o", str(out),
               "--labels", str(paths["moving_labels"]), *(["--allow-flagged"] if qc else ["--no-qc"]),
               *shlex.split(args.unireg_args), *shlex.split(extra)]
    else:
        cmd = [sys.executable, str(PEER), "ants", str(paths["fixed"]), str(paths["moving"]), str(out),
               "--metric", metric, "--threads", str(args.threads), "--labels", str(paths["moving_labels"])]
    r = run_child(cmd, child_env(args.threads), work / f"{name}.log", args.timeout)
    row = {"method": name, "seconds": r["seconds"], "dice": float("nan"), "status": "ok"}
    wl = out / "warped_labels.nii.gz"
    if r["rc"] != 0 or not wl.is_file():
        row["status"] = f"failed (rc {r['rc']}, see {work / (name + '.log')})"
        return row, None
    if method == "unireg" and qc:
        row["flagged"] = bool(json.loads((out / "report.json").read_text()).get("qc_flag"))
    return row, np.asarray(nib.load(str(wl)).dataobj)


def add_run_options(p: argparse.ArgumentParser, threads: int, timeout: float, name: str) -> None:
    """The options every label-scored comparison here takes: methods, threads, UniReg's extra options, the timeout,
    where the results and the pair files go."""
    p.add_argument("--methods", default="unireg,ants", help="comma list from unireg,ants")
    p.add_argument("--threads", type=int, default=threads, help=f"threads for every method (default {threads})")
    p.add_argument("--unireg-args", default="", help="extra options for `unireg register`")
    p.add_argument("--timeout", type=float, default=timeout, help="seconds per method and pair")
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument("--name", default=name, help=f"file name stem of the results (default {name})")
    p.add_argument("--work", type=Path, default=None, help="folder for pair files (default: a temporary folder)")


def methods_of(p: argparse.ArgumentParser, text: str) -> list[str]:
    """``--methods``' list, in the tables' order; a usage error if it names neither method."""
    methods = [m for m in ("unireg", "ants") if m in {x.strip() for x in text.split(",")}]
    if not methods:
        p.error("--methods takes unireg and/or ants")
    return methods


def scored(base: dict, fixed_lab: np.ndarray, row: dict, warped: np.ndarray | None) -> dict:
    """``run_method``'s row with the GM/WM Dice of its warped labels (a slice file's one-voxel axis dropped), under
    the pair's ``base`` fields."""
    if warped is not None:
        row["dice"] = dice_gm_wm(fixed_lab, warped.reshape(fixed_lab.shape))
    return dict(base, **row)


def median_seconds(by: dict, cases, method: str) -> str:
    """The median of ``method``'s seconds over ``cases`` (``by``: (case, method) -> row), for a table cell."""
    secs = [by[(c, method)]["seconds"] for c in cases if (c, method) in by and np.isfinite(by[(c, method)]["seconds"])]
    return f"{statistics.median(secs):.1f}" if secs else "-"


def write_results(args, argv, script: str, title: str, what: str, rows: list[dict], fields: list[str], table: str,
                  t0: float, load0) -> str:
    """``args.name``.csv and .md into ``args.out_dir``: the md's title, the command that made it (``script``'s,
    with ``argv``), when, how long (since ``t0``), the threads, the load then (``load0``) and now, ``what`` the
    figures are, and ``table``; printed too."""
    load1 = os.getloadavg()
    write_csv(args.out_dir / f"{args.name}.csv", rows, fields)
    cmd = f"python benchmarks/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"# {title}\n\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{time.perf_counter() - t0:.0f} s, {args.threads} thread(s) per method, load average {load0[0]:.2f} -> "
            f"{load1[0]:.2f})\n\n{what}\n\n" + table + "\n")
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return text


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in fields})


def summarise(rows: list[dict], methods: list[str]) -> str:
    by = {(r["case"], r["method"]): r for r in rows}
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fam_of = {r["case"]: r["family"] for r in rows}
    head = ["family", "n", "Dice none"] + [f"Dice {m}" for m in methods]
    if "unireg" in methods and "ants" in methods:
        head += ["UniReg - ANTs (pts)", "UniReg / ANTs gain over none"]
    head += [f"{m} < none" for m in methods] + [f"median s {m}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = [(f, [c for c in cases if fam_of[c] == f]) for f in FAMILIES] + [("all", cases)]
    for fam, cs in groups:
        if not cs:
            continue

        def mean(m, cs=cs):
            v = [by[(c, m)]["dice"] for c in cs if (c, m) in by and np.isfinite(by[(c, m)]["dice"])]
            return float(np.mean(v)) if v else float("nan")

        cells = [fam, str(len(cs)), f"{mean('none'):.3f}"] + [f"{mean(m):.3f}" for m in methods]
        if "unireg" in methods and "ants" in methods:
            u, a, n0 = mean("unireg"), mean("ants"), mean("none")
            cells += [f"{100 * (u - a):+.1f}", f"{(u - n0) / (a - n0):.2f}" if abs(a - n0) > 1e-9 else "-"]
        for m in methods:
            below = sum(1 for c in cs if (c, m) in by and by[(c, m)]["dice"] < by[(c, "none")]["dice"] - 1e-9)
            cells.append(f"{below}/{len(cs)}")
        cells += [median_seconds(by, cs, m) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=24, help="number of pairs (default 24: 3 per contrast family)")
    p.add_argument("--orientation", choices=sorted(ORIENTATIONS), default="axial",
                   help="slices of the volume (default axial; coronal and sagittal ones go to UniReg as one-voxel-"
                        "thick 3-D files, to ANTs as 2-D images)")
    add_run_options(p, threads=1, timeout=600.0, name="slice_pairs")
    args = p.parse_args(argv)
    args.methods = methods_of(p, args.methods)
    work = args.work or Path(tempfile.mkdtemp(prefix="unireg_slice_pairs_"))
    specs = pair_list(args.pairs, args.orientation)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []
    for i, spec in enumerate(specs):
        got = run_pair(spec, args, work)
        rows += got
        print(json.dumps({r["method"]: round(r["dice"], 4) for r in got} | {"case": spec["case"], "n": f"{i + 1}/{len(specs)}"}),
              flush=True)
    load1 = os.getloadavg()
    write_csv(args.out_dir / f"{args.name}.csv", rows, FIELDS)
    cmd = "python benchmarks/slice_pairs.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = (f"# Real anatomical differences: MNI {args.orientation} slice z vs slice z+d\n\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{time.perf_counter() - t0:.0f} s, {args.threads} thread(s) per method, load average {load0[0]:.2f} -> {load1[0]:.2f})\n\n"
            f"GM/WM Dice of the fixed slice's labels against the moving slice's labels through each method's warp; "
            f"'UniReg / ANTs gain over none' = (UniReg - none) / (ANTs - none).\n\n" + summarise(rows, ["unireg", "ants"] if
                                                                                                len(args.methods) == 2 else args.methods) + "\n")
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
