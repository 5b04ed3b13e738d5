"""Held-out evaluation of UniReg against ANTs SyN and elastix on pairs nobody tuned to.

    python benchmarks/held_out.py                       # default run (see --help for the size)
    python benchmarks/held_out.py --quick               # tiny volumes, 1 pair per family, minutes
    python benchmarks/held_out.py --dims 3 --families mni,smooth --methods none,unireg,ants --pairs 1
    python benchmarks/held_out.py --unireg-args "--refine 0"

Pairs come from the frozen suite ``unireg.evaluation.suite`` (deformation x intensity x grid x anatomy
families, seeded from committed constants; families in ``HELD_OUT`` are never drawn by training code).
Each pair is written as NIfTI files; every method runs as its own subprocess on the same files:
``unireg register`` (the whole CLI), ``benchmarks/held_out_peer.py ants`` (antspyx SyN: Mattes MI across
contrasts, CC for the monotonic ``gamma`` family, antspyx default iterations) and
``benchmarks/held_out_peer.py elastix`` (itk-elastix affine + B-spline, AdvancedMattesMutualInformation).
Seconds are whole-process wall time, memory the child's peak RSS (``os.wait4``); every method gets the
same thread count.  Each method's ``warp.nii.gz`` (fixed->moving, fixed grid) is scored against the known
true map (``unireg.evaluation.suite.scoring``); ``none`` is the identity.

Writes ``benchmarks/results/held_out.md`` (tables), ``held_out.csv`` (one row per pair and method) and
``held_out_{2d,3d}.png`` (box plots); prints the tables and the machine's load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's unireg, also for the children (PYTHONPATH below)

METHODS = ("none", "unireg", "ants", "elastix")
TITLES = {"none": "none", "unireg": "UniReg", "ants": "ANTs", "elastix": "elastix"}
SAME_CONTRAST = {"gamma"}  # monotonic map: ANTs uses CC (within-contrast); MI (Mattes) otherwise
PEER = ROOT / "benchmarks" / "held_out_peer.py"
UNIREG_CLI = "import sys; from unireg.cli.main import main; sys.argv[0] = 'unireg'; main()"
FIELDS = ["case", "dim", "deformation", "intensity", "grid", "anatomy", "held_out", "method", "status", "dice",
          "dice_true_map", "epe_mm", "epe_p95_mm", "folded_pct", "logjac_err", "ic_mm", "seconds", "registration_s",
          "peak_rss_mb", "fallback", "fallback_stages", "qc_flag", "ants_metric", "max_disp_mm", "load1",
          "refused_stages"]


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
              "NUMEXPR_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


# A tiny launcher (``python -S``: no site, ~10 MiB) execs the real child and reports its rusage.  The
# child must not be forked straight from this process: ru_maxrss survives exec, so a child forked from a
# parent holding torch would report the parent's resident size as its own peak.
_LAUNCHER = """
import json, os, sys, time
cmd, report = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
pid = os.posix_spawn(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as fh:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - t0,
               "peak_rss_mb": ru.ru_maxrss / 1024.0}, fh)
"""


def run_child(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run ``cmd`` (through the launcher); whole-process wall seconds and the child's peak RSS (MiB, os.wait4)."""
    import signal

    report = log.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, json.dumps(cmd), str(report)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"rc": -9, "seconds": timeout, "peak_rss_mb": math.nan, "timed_out": True}
    if not report.is_file():
        return {"rc": proc.returncode or 1, "seconds": math.nan, "peak_rss_mb": math.nan, "timed_out": False}
    r = json.loads(report.read_text())
    r["timed_out"] = False
    return r


def method_cmd(method: str, paths: dict, out: Path, spec, args) -> tuple[list[str], dict]:
    if method == "unireg":
        return [sys.executable, "-c", UNIREG_CLI, "register", str(paths["fixed"]), str(paths["moving"]), "-o", str(out),
                *shlex.split(args.unireg_args)], {}
    if method == "ants":
        metric = args.ants_metric if args.ants_metric != "auto" else (
            "cc" if spec.intensity in SAME_CONTRAST else "mattes")
        return [sys.executable, str(PEER), "ants", str(paths["fixed"]), str(paths["moving"]), str(out), "--metric", metric,
                "--threads", str(args.threads)], {"ants_metric": metric}
    return [sys.executable, str(PEER), "elastix", str(paths["fixed"]), str(paths["moving"]), str(out),
            "--threads", str(args.threads)], {}


def refused(report: dict) -> list[str]:
    """Stages UniReg did not keep (``report.json["stages"][name]["kept"] is False``); [] without the key."""
    stages = report.get("stages")
    if not isinstance(stages, dict):
        return []
    return [k for k, v in stages.items() if isinstance(v, dict) and v.get("kept") is False]


def fallbacks(report: dict, deformation: str | None = None) -> list[str]:
    """Stages the pair needed that UniReg refused, falling back to the stage before: the ``affine`` of a
    pair whose true map has an affine part (the ``affine`` family), the ``deformable`` result of a pair
    whose true map deforms (every family but ``aligned``).  Refusing an affine that the pair does not
    have, or any deformation of an aligned pair, is the do-no-harm check doing its job, not a fallback
    (``refused_stages`` in the CSV lists every refusal).  Without ``deformation``: every refused stage."""
    out = refused(report)
    if deformation is None:
        return out
    needed = {"affine": deformation == "affine", "deformable": deformation != "aligned"}
    return [k for k in out if needed.get(k, False)]


def evaluate_pair(spec, args, work: Path, writer, fh, anatomy: dict | None = None) -> list[dict]:
    import numpy as np

    from unireg.evaluation.suite.cases import build_case, write_case
    from unireg.evaluation.suite.scoring import score_map
    from unireg.io.warp import read_displacement_field

    t0 = time.perf_counter()
    case = build_case(spec, anatomy)
    d = work / spec.name
    paths = write_case(case, d)
    meta = case["meta"]
    base = {"case": spec.name, "dim": spec.ndim, "deformation": spec.deformation, "intensity": spec.intensity,
            "grid": spec.grid, "anatomy": spec.anatomy, "held_out": int(spec.held_out),
            "max_disp_mm": meta.get("max_disp_mm")}
    truth = score_map(case, case["true_warp_mm"])["dice"]
    print(f"  {spec.name}: built in {time.perf_counter() - t0:.1f} s (true-map Dice {truth:.3f})", flush=True)
    rows = []
    env = child_env(args.threads)
    for method in args.methods:
        row = dict(base, method=method, dice_true_map=truth, load1=round(os.getloadavg()[0], 2))
        if method == "none":
            row.update(status="ok", **score_map(case, np.zeros_like(case["true_warp_mm"])))
        else:
            out = d / method
            out.mkdir(exist_ok=True)
            cmd, extra = method_cmd(method, paths, out, spec, args)
            row.update(extra)
            r = run_child(cmd, env, d / f"{method}.log", args.timeout)
            row.update(seconds=round(r["seconds"], 2), peak_rss_mb=round(r["peak_rss_mb"], 1))
            # unireg's exit status 3 = registration flagged as failed, outputs written: scored as it is
            ok_rc = (0, 3) if method == "unireg" else (0,)
            if r["rc"] not in ok_rc or not (out / "warp.nii.gz").is_file():
                tail = (d / f"{method}.log").read_text(errors="replace").strip().splitlines()[-3:]
                row["status"] = "timeout" if r["timed_out"] else f"failed rc={r['rc']}: {' | '.join(tail)[-300:]}"
                print(f"    {method}: {row['status']}", flush=True)
            else:
                disp, _ = read_displacement_field(out / "warp.nii.gz")
                inv = None
                if (out / "inverse_warp.nii.gz").is_file():
                    inv = read_displacement_field(out / "inverse_warp.nii.gz")
                rep = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
                if method == "unireg":
                    fb = fallbacks(rep, spec.deformation)
                    row.update(fallback=int(bool(fb)), fallback_stages=";".join(fb),
                               refused_stages=";".join(refused(rep)))
                    row["registration_s"] = (rep.get("runtime_s") or {}).get("total")
                    row["qc_flag"] = int(bool(rep.get("qc_flag")))
                else:
                    row["registration_s"] = rep.get("registration_s")
                row.update(status="ok", **score_map(case, disp, inv))
        rows.append(row)
        writer.writerow({k: row.get(k, "") for k in FIELDS})
        fh.flush()
        if row["status"] == "ok":
            print(f"    {method:8s} Dice {row['dice']:.3f}  EPE {row['epe_mm']:.2f} mm  folded {row['folded_pct']:.3f} %"
                  + (f"  {row['seconds']:.1f} s  {row['peak_rss_mb']:.0f} MiB" if method != "none" else ""), flush=True)
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------------------- tables
def _mean(vals):
    v = [float(x) for x in vals if x not in ("", None) and not (isinstance(x, float) and math.isnan(x))]
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _f(x, fmt="{:.3f}"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def summarise(rows: list[dict], methods: list[str]) -> str:
    from unireg.evaluation.suite.cases import ANATOMIES, DEFORMATIONS, GRIDS, HELD_OUT, INTENSITIES

    ok = [r for r in rows if r["status"] == "ok"]
    by = {}
    for r in ok:
        by.setdefault((r["case"], r["method"]), r)
    cases = sorted({r["case"]: r for r in rows}.values(), key=lambda r: r["case"])
    peers = [m for m in ("unireg", "ants", "elastix") if m in methods]
    head = ["dim", "family", "n", "Dice true map"] + [f"Dice {TITLES[m]}" for m in methods]
    if "unireg" in methods and "ants" in methods:
        head += ["UniReg − ANTs (pts)"]
    head += [f"EPE mm {TITLES[m]}" for m in methods]
    if "unireg" in methods and "ants" in methods:
        head += ["EPE UniReg/ANTs"]
    head += [f"% folded {TITLES[m]}" for m in peers] + [f"logJ err {TITLES[m]}" for m in peers]
    head += [f"IC mm {TITLES[m]}" for m in peers if m != "elastix"]
    if "unireg" in methods:
        head += ["UniReg < none", "fallbacks (needed stage refused)"]
    head += [f"{TITLES[m]} < none" for m in peers if m != "unireg"]  # the peers on the same pairs
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    kinds = [("deformation", DEFORMATIONS), ("intensity", INTENSITIES), ("grid", GRIDS), ("anatomy", ANATOMIES)]
    for dim in sorted({r["dim"] for r in cases}):
        for kind, fams in kinds + [("all", ["all"])]:
            for fam in fams:
                cs = [c["case"] for c in cases if c["dim"] == dim and (kind == "all" or c[kind] == fam)]
                if not cs:
                    continue

                def col(m, key):
                    return _mean(by[(c, m)][key] for c in cs if (c, m) in by)

                label = "all pairs" if kind == "all" else f"{kind}: {fam}" + (" (held out)" if fam in HELD_OUT else "")
                cells = [f"{dim}-D", label, str(len(cs)), _f(_mean(by[(c, methods[0])]["dice_true_map"] for c in cs
                                                                   if (c, methods[0]) in by))]
                cells += [_f(col(m, "dice")) for m in methods]
                if "unireg" in methods and "ants" in methods:
                    cells.append(_f(100 * (col("unireg", "dice") - col("ants", "dice")), "{:+.1f}"))
                cells += [_f(col(m, "epe_mm"), "{:.2f}") for m in methods]
                if "unireg" in methods and "ants" in methods:
                    cells.append(_f(col("unireg", "epe_mm") / col("ants", "epe_mm") if col("ants", "epe_mm") > 0 else math.nan,
                                    "{:.2f}"))
                cells += [_f(col(m, "folded_pct"), "{:.3f}") for m in peers]
                cells += [_f(col(m, "logjac_err"), "{:.3f}") for m in peers]
                cells += [_f(col(m, "ic_mm"), "{:.2f}") for m in peers if m != "elastix"]
                if "unireg" in methods:
                    below = sum(1 for c in cs if (c, "unireg") in by and (c, "none") in by
                                and by[(c, "unireg")]["dice"] < by[(c, "none")]["dice"])
                    failed = sum(1 for r in rows if r["case"] in cs and r["method"] == "unireg" and r["status"] != "ok")
                    fb = sum(int(by[(c, "unireg")].get("fallback") or 0) for c in cs if (c, "unireg") in by)
                    cells += [f"{below}/{len(cs)}", f"{fb}/{len(cs)}" + (f" ({failed} failed)" if failed else "")]
                for m in peers:
                    if m != "unireg":
                        scored = [c for c in cs if (c, m) in by and (c, "none") in by]
                        worse = sum(1 for c in scored if by[(c, m)]["dice"] < by[(c, "none")]["dice"])
                        cells.append(f"{worse}/{len(scored)}")
                lines.append("| " + " | ".join(cells) + " |")
    # cost table
    cost = ["", "| dim | method | pairs | mean s (whole process) | max s | mean registration s | mean peak RSS MiB | max peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|"]
    for dim in sorted({r["dim"] for r in cases}):
        for m in peers:
            rs = [r for r in ok if r["dim"] == dim and r["method"] == m]
            if rs:
                cost.append(f"| {dim}-D | {TITLES[m]} | {len(rs)} | {_mean(r['seconds'] for r in rs):.1f} | "
                            f"{max(float(r['seconds']) for r in rs):.1f} | {_f(_mean(r.get('registration_s') for r in rs), '{:.1f}')} | "
                            f"{_mean(r['peak_rss_mb'] for r in rs):.0f} | {max(float(r['peak_rss_mb']) for r in rs):.0f} |")
        if "unireg" in peers and "ants" in peers:
            pairs = [c["case"] for c in cases if c["dim"] == dim and (c["case"], "unireg") in by and (c["case"], "ants") in by]
            if pairs:
                ratio = sum(float(by[(c, "ants")]["seconds"]) for c in pairs) / sum(float(by[(c, "unireg")]["seconds"]) for c in pairs)
                cost.append(f"| {dim}-D | ANTs s / UniReg s | {len(pairs)} | {ratio:.2f}x | | | | |")
    return "\n".join(lines + cost)


def read_rows(csv_path: Path) -> list[dict]:
    """The rows of a held-out CSV as :func:`evaluate_pair` made them (numbers as numbers), to summarise
    a finished run again (``--summarise``)."""
    text = {"case", "deformation", "intensity", "grid", "anatomy", "method", "status", "fallback_stages", "ants_metric",
            "refused_stages"}
    rows = []
    with open(csv_path, newline="") as fh:
        for r in csv.DictReader(fh):
            row: dict = {}
            for k, v in r.items():
                if k in text or v in ("", None):
                    row[k] = v
                elif k in ("dim", "held_out", "fallback", "qc_flag"):
                    row[k] = int(float(v))
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


def box_plots(rows: list[dict], methods: list[str], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unireg.evaluation.suite.cases import DEFORMATIONS, HELD_OUT

    ok = [r for r in rows if r["status"] == "ok"]
    written = []
    colors = {"none": "#999999", "unireg": "#1f77b4", "ants": "#d62728", "elastix": "#2ca02c"}
    for dim in sorted({r["dim"] for r in ok}):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        for ax, key, title in ((axes[0], "dice", "Dice (mean over labels)"), (axes[1], "epe_mm", "end-point error in the object (mm)")):
            fams = [f for f in DEFORMATIONS if any(r["dim"] == dim and r["deformation"] == f for r in ok)]
            w = 0.8 / len(methods)
            for j, m in enumerate(methods):
                data = [[float(r[key]) for r in ok if r["dim"] == dim and r["deformation"] == f and r["method"] == m] or [math.nan]
                        for f in fams]
                pos = [i + (j - (len(methods) - 1) / 2) * w for i in range(len(fams))]
                bp = ax.boxplot(data, positions=pos, widths=w * 0.9, patch_artist=True, showfliers=True)
                for b in bp["boxes"]:
                    b.set_facecolor(colors[m])
                ax.plot([], [], color=colors[m], lw=6, label=TITLES[m])
            ax.set_xticks(range(len(fams)))
            ax.set_xticklabels([f + (" *" if f in HELD_OUT else "") for f in fams])
            ax.set_title(f"{dim}-D: {title}")
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(loc="lower left", fontsize=8)
        fig.suptitle(f"held-out suite, {dim}-D, by deformation family (* = held out); load {os.getloadavg()[0]:.1f}")
        fig.tight_layout()
        p = out_dir / f"held_out_{dim}d.png"
        tmp = p.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, p)
        written.append(p)
    return written


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Default size: 2-D 5 pairs and 3-D 2 pairs per deformation family (5 families, 35 pairs); "
                                       "about 40 min on a 2-core machine with all methods (elastix alone pays ~25 s of itk start-up per pair).")
    p.add_argument("--quick", action="store_true", help="tiny volumes, 1 pair per deformation family")
    p.add_argument("--pairs", type=int, default=None, help="pairs per deformation family and dim (default 2-D 5, 3-D 2)")
    p.add_argument("--start", type=int, default=0,
                   help="run only the pairs from this index on in each family (e.g. --pairs 40 --start 20: "
                        "20 pairs per family that a run of --pairs 20 never drew)")
    p.add_argument("--dims", default="2,3", help="comma list of 2 and/or 3")
    p.add_argument("--families", default="", help="comma list of family names of any kind (deformation, intensity, grid, anatomy)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list from " + ",".join(METHODS))
    p.add_argument("--unireg-args", default="", help='options passed to `unireg register`, e.g. "--refine 0"')
    p.add_argument("--threads", type=int, default=2, help="threads for every method (default 2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and pair")
    p.add_argument("--ants-metric", choices=("auto", "mattes", "cc"), default="auto",
                   help="ANTs SyN metric: auto = CC within one contrast (gamma), Mattes MI across contrasts; "
                        "CC at 1 mm in 3-D costs ANTs 15+ CPU minutes per pair on a 2-core machine")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None, help="folder for pair files (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep pair and output files in --work")
    p.add_argument("--summarise", type=Path, default=None, metavar="CSV",
                   help="print the tables of a finished run's held_out.csv again (nothing is run)")
    args = p.parse_args(argv)
    if args.summarise is not None:
        rows = read_rows(args.summarise)
        print(summarise(rows, [m for m in METHODS if any(r["method"] == m for r in rows)]))
        return 0
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        p.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    if "none" not in args.methods:
        args.methods.insert(0, "none")  # the do-no-harm reference is always scored
    args.methods = [m for m in METHODS if m in args.methods]
    dims = tuple(int(d) for d in args.dims.split(",") if d.strip())
    if not dims or any(d not in (2, 3) for d in dims):
        p.error("--dims takes 2 and/or 3")
    fams = [f.strip() for f in args.families.split(",") if f.strip()]

    import tempfile

    import torch

    from unireg.evaluation.suite.cases import DEFAULT_PAIRS, case_list

    torch.set_num_threads(args.threads)
    pairs = 1 if args.quick and args.pairs is None else args.pairs
    pairs = dict(DEFAULT_PAIRS) if pairs is None else pairs
    try:
        specs = case_list(dims=dims, pairs=pairs, families=fams, tiny=args.quick)
    except ValueError as e:
        p.error(str(e))
    specs = [sp for sp in specs if sp.index >= args.start]
    if not specs:
        p.error("no pairs match --families/--dims/--start")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="unireg_held_out_"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    print(f"held-out suite: {len(specs)} pairs, methods {','.join(args.methods)}, threads {args.threads}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    csv_path = args.out_dir / "held_out.csv"
    tmp_csv = csv_path.with_name(csv_path.name + ".tmp")
    rows: list[dict] = []
    with open(tmp_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for i, spec in enumerate(specs):
            print(f"[{i + 1}/{len(specs)}] {time.perf_counter() - t0:.0f} s", flush=True)
            rows += evaluate_pair(spec, args, work, writer, fh)
    os.replace(tmp_csv, csv_path)
    load1 = os.getloadavg()
    wall = time.perf_counter() - t0
    table = summarise(rows, args.methods)
    cmd = "python benchmarks/held_out.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    md = (f"# Held-out evaluation\n\n`{cmd.strip()}`\n\n"
          f"{len(specs)} pairs from the frozen suite `unireg.evaluation.suite` (seed in `cases.SUITE_SEED`); "
          f"families marked *held out* are never drawn by training code. Dice: mean over the fixed labels "
          f"(GM/WM for the MNI brain), scored where the true map lands inside the moving field of view; "
          f"'Dice true map' is the ceiling (the known map itself). EPE: end-point error against the known "
          f"fixed->moving map inside the object; logJ err: mean |log det J - log det J_true|; IC: inverse "
          f"consistency (UniReg inverse_warp, ANTs invtransforms). Seconds: whole process (CLI / peer script, "
          f"imports included), peak RSS of the child. Threads {args.threads} for every method; "
          f"UniReg args: `{args.unireg_args or '(defaults)'}`; ANTs metric: {args.ants_metric}.\n\n"
          f"Machine: {os.cpu_count()} CPUs, load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; wall {wall / 60:.1f} min.\n\n"
          f"{table}\n")
    _atomic_write(args.out_dir / "held_out.md", md)
    pngs = box_plots(rows, args.methods, args.out_dir)
    print()
    print(table)
    print(f"\nload average: {load0[0]:.2f} at start, {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end; wall {wall:.0f} s")
    print("wrote", args.out_dir / "held_out.md", csv_path, *pngs)
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
