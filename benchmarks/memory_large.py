"""Peak memory and wall time of ``unireg register`` on whole-brain volumes at 1 mm and 0.5 mm.

Builds the MNI ICBM152 T1 (``unireg.data.mni.load_mni``) and a smoothly deformed copy of it
(``unireg.demo.make_demo_pair``, known warp) at 1 mm (197x233x189), then upsamples both by 2 per axis
to 0.5 mm (394x466x378, affine columns halved, voxel centres kept in place), writes them as
``.nii.gz`` to a temporary folder, runs ``unireg register`` on each pair in a child process and
prints the child's peak resident memory (``ru_maxrss`` from ``os.wait4``, cross-checked with a
psutil poll every 0.2 s) and wall time as a markdown table.

Not installed with the package.  Usage::

    python benchmarks/memory_large.py [--refine 20] [--threads 2] [--no-qc] [--keep DIR]

The budget is 24 GB peak RSS for the 0.5 mm pair (exit status 1 when it is exceeded).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BUDGET_GB = 24.0


def _upsample2(path_in: Path, path_out: Path) -> tuple[int, ...]:
    """Trilinear x2 upsampling of a NIfTI volume onto a 0.5 mm grid covering the same field of view."""
    import torch
    import torch.nn.functional as F

    from unireg.io.image import read_image, write_image

    img = read_image(path_in)
    t = torch.from_numpy(img.data)[None]  # (1, 1, X, Y, Z)
    up = F.interpolate(t, scale_factor=2, mode="trilinear", align_corners=False)[0].numpy()
    del t
    aff = img.affine.copy()
    # new voxel i' has centre at old voxel (i' - 0.5) / 2 (align_corners=False): half the columns,
    # shift the origin by -1/4 of an old voxel along each axis
    aff[:3, 3] = img.affine[:3, 3] - 0.25 * img.affine[:3, :3].sum(axis=1)
    aff[:3, :3] = img.affine[:3, :3] * 0.5
    write_image(path_out, up, aff, dtype=np.float32)
    return tuple(up.shape[1:])


def _run(cmd: list[str]) -> dict:
    """Run ``cmd``; return wall time, peak RSS (ru_maxrss, GB) and psutil's polled peak (GB)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def poll():
        try:
            p = psutil.Process(proc.pid)
            while not done.is_set():
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], rss)
                time.sleep(0.2)
        except psutil.Error:
            pass

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out = proc.stdout.read()
    # os.wait4 gives this child's own rusage (ru_maxrss in KiB on Linux), not the sum over all children
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    return {"rc": proc.returncode, "wall_s": wall, "maxrss_gb": ru.ru_maxrss / 2**20,
            "polled_gb": peak[0] / 2**30, "output": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refine", type=int, default=20, help="--refine passed to unireg register")
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--no-qc", action="store_true")
    ap.add_argument("--only", choices=["1mm", "0.5mm"], default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs/outputs in this folder")
    args = ap.parse_args(argv)

    from unireg.demo import make_demo_pair

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="unireg-memlarge-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        pair = make_demo_pair(root / "1mm", contrast="t1", seed=0)
        cases = {"1mm": (pair["fixed"], pair["moving"], (197, 233, 189))}
        if args.only != "1mm":
            d05 = root / "0.5mm"
            d05.mkdir(exist_ok=True)
            shp = _upsample2(pair["fixed"], d05 / "fixed.nii.gz")
            _upsample2(pair["moving"], d05 / "moving.nii.gz")
            cases["0.5mm"] = (d05 / "fixed.nii.gz", d05 / "moving.nii.gz", shp)
        if args.only:
            cases = {args.only: cases[args.only]}
        print(f"inputs ready in {time.perf_counter() - t0:.1f} s under {root}", file=sys.stderr)

        rows = []
        for name, (fixed, moving, shape) in cases.items():
            out = root / f"out_{name}"
            cmd = [sys.executable, "-m", "unireg.cli.main", "--threads", str(args.threads), "register",
                   str(fixed), str(moving), "--out", str(out), "--refine", str(args.refine)]
            if args.no_qc:
                cmd.append("--no-qc")
            print("$ " + " ".join(cmd), file=sys.stderr)
            r = _run(cmd)
            if r["rc"] != 0:
                print(r["output"], file=sys.stderr)
            rows.append((name, "x".join(map(str, shape)), r))

        print(f"\n`unireg register --refine {args.refine}{' --no-qc' if args.no_qc else ''}`, "
              f"--threads {args.threads}, untrained default model (2 mm working grid)\n")
        print("| input | voxels | exit | wall time (s) | peak RSS ru_maxrss (GB) | peak RSS polled (GB) |")
        print("|---|---|---|---|---|---|")
        for name, shape, r in rows:
            print(f"| {name} | {shape} | {r['rc']} | {r['wall_s']:.1f} | {r['maxrss_gb']:.2f} | {r['polled_gb']:.2f} |")
        worst = max(r["maxrss_gb"] for _, _, r in rows)
        ok = worst <= BUDGET_GB and all(r["rc"] == 0 for _, _, r in rows)
        print(f"\nbudget {BUDGET_GB:.0f} GB: {'OK' if ok else 'EXCEEDED or failed'}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
