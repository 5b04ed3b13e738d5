"""Applying a saved warp, timed: ``unireg apply`` against antspyx's ``apply_transforms`` on the same files.

    python benchmarks/apply_speed.py [--repeats 5] [--threads 2] [--quick] [--work DIR] [--out results.json]

The pair is :func:`unireg.demo.make_demo_pair`'s (1 mm MNI T1, 197x233x189, and a deformed T2-like
copy with its label map; ``--quick``: the 2 mm pair cropped to a block, one repeat, a smoke test whose
figures say nothing about speed).  It is registered once with ``unireg register``; then, interleaved
(drift hits all alike), each of these is its own process reading the same files and writing one:

- ``unireg --threads T apply OUT/warp.nii.gz MOVING --ref FIXED -o ...`` (linear) and the same for the
  moving label map with ``--labels`` (label-wise, ANTs' ``GenericLabel``);
- ``python benchmarks/apply_speed.py --peer ...``: ``ants.apply_transforms(fixed, moving, [warp])``
  (``linear``, then ``genericLabel``) and ``ants.image_write``, antspyx's own reading and writing.

Every process gets the same thread count (``unireg --threads``, ``OMP_NUM_THREADS``,
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``).  Figures: whole-process wall seconds and peak RSS (MiB,
``os.wait4``), medians over the repeats, the ratio ANTs/UniReg, and how far the two outputs agree
(the warp is ITK's own file format, so both must give the same image): the absolute difference
(mean, 99.9th percentile) of the warped images inside the head, as a share of the moving image's
intensity range, and the share of voxels where the warped label maps agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import make_pair, timed_process, unireg_command  # noqa: E402  (this folder's own helpers)

KINDS = ("image", "labels")


def peer(kind: str, warp: Path, moving: Path, fixed: Path, out: Path) -> None:
    """antspyx applying ``warp`` (one ITK displacement field) to ``moving`` on ``fixed``'s grid."""
    import ants

    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    res = ants.apply_transforms(fixed=f, moving=m, transformlist=[str(warp)],
                                interpolator="linear" if kind == "image" else "genericLabel")
    ants.image_write(res, str(out))


def commands(paths: dict, warp: Path, out: Path, threads: int) -> dict:
    uni = unireg_command()
    cmds = {}
    for kind in KINDS:
        src = paths["moving"] if kind == "image" else paths["moving_labels"]
        cmds[f"unireg_{kind}"] = uni + ["--threads", str(threads), "apply", str(warp), str(src), "--ref",
                                        str(paths["fixed"]), "-o", str(out / f"unireg_{kind}.nii.gz")] + (
            ["--labels"] if kind == "labels" else [])
        cmds[f"ants_{kind}"] = [sys.executable, str(Path(__file__).resolve()), "--peer", kind, str(warp), str(src),
                                str(paths["fixed"]), str(out / f"ants_{kind}.nii.gz")]
    return cmds


def agreement(out: Path, paths: dict) -> dict:
    """How far UniReg's and antspyx's outputs agree, computed in a child (this process stays small)."""
    code = (
        "import json, sys, numpy as np, nibabel as nib\n"
        "out, fixed, moving = sys.argv[1:4]\n"
        "ld = lambda p: np.asarray(nib.load(p).dataobj)\n"
        "u, a = ld(out + '/unireg_image.nii.gz').astype(float), ld(out + '/ants_image.nii.gz').astype(float)\n"
        "m = ld(moving).astype(float); rng = float(np.percentile(m, 99.5) - m.min())\n"
        "head = ld(fixed) > np.percentile(ld(fixed), 60)\n"
        "d = np.abs(u - a)[head] / rng\n"
        "lu, la = ld(out + '/unireg_labels.nii.gz'), ld(out + '/ants_labels.nii.gz')\n"
        "print(json.dumps({'image_mean_diff': float(d.mean()), 'image_p999_diff': float(np.percentile(d, 99.9)),\n"
        "                  'labels_agree': float((lu == la).mean())}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out), str(paths["fixed"]), str(paths["moving"])],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"comparing the outputs failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(res: dict, agree: dict, load: tuple) -> str:
    lines = [f"### apply (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", "",
             "| what | UniReg median s | ANTs median s | ANTs/UniReg | UniReg peak MiB | ANTs peak MiB |",
             "|---|---|---|---|---|---|"]
    for kind in KINDS:
        u, a = res[f"unireg_{kind}"], res[f"ants_{kind}"]
        lines.append(f"| {kind} | {u['wall_s']:.2f} | {a['wall_s']:.2f} | {a['wall_s'] / u['wall_s']:.2f}x | "
                     f"{u['peak_mib']:.0f} | {a['peak_mib']:.0f} |")
    lines += ["", f"Outputs: warped images differ by {100 * agree['image_mean_diff']:.2g} % of the moving intensity "
              f"range on average inside the head (99.9th percentile {100 * agree['image_p999_diff']:.2g} %); "
              f"warped label maps agree on {100 * agree['labels_agree']:.5f} % of voxels."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="unireg apply vs antspyx apply_transforms, whole processes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 mm crop, 1 repeat (smoke test)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the pair and outputs (default: temporary)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--peer", nargs=5, metavar=("KIND", "WARP", "MOVING", "FIXED", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.peer:
        kind, *files = a.peer
        peer(kind, *map(Path, files))
        return 0
    repeats = 1 if a.quick else a.repeats
    import compileall

    import unireg

    compileall.compile_dir(str(Path(unireg.__file__).parent), quiet=1)  # as a wheel install has it
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(a.threads))
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        paths = make_pair(work, a.quick)
        reg = work / "registration"
        timed_process(unireg_command() + ["--threads", str(a.threads), "register", str(paths["fixed"]),
                                          str(paths["moving"]), "-o", str(reg), "-q", "--no-qc"], env)
        out = work / "applied"
        out.mkdir(parents=True, exist_ok=True)
        runs: dict[str, list] = {}
        load0 = os.getloadavg()
        for r in range(repeats):
            for name, cmd in commands(paths, reg / "warp.nii.gz", out, a.threads).items():
                res = timed_process(cmd, env)
                runs.setdefault(name, []).append(res)
                print(f"  repeat {r + 1}/{repeats} {name}: {res['wall_s']:.2f} s, {res['peak_mib']:.0f} MiB",
                      flush=True)
        load = os.getloadavg()
        res = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} | {"runs": rs} for n, rs in runs.items()}
        agree = agreement(out, paths)
        print(table(res, agree, load), flush=True)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            cfg = {"threads": a.threads, "repeats": repeats, "quick": a.quick, "cpus": os.cpu_count(),
                   "load_start": load0, "load_end": load}
            a.out.write_text(json.dumps({"config": cfg, "results": res, "agreement": agree}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
