"""What users run, timed: the default ``unireg register`` (and ``--fast``) against ANTs SyN doing the same job.

    python benchmarks/speed.py [--repeats 3] [--threads 2] [--quick] [--no-load] [--same-files] [--out results.json]

The pair is ``unireg.demo.make_demo_pair`` (MNI ICBM152 T1, 197x233x189 at 1 mm, against a deformed
T2-like copy, with both label maps); ``--quick``: the 2 mm pair cropped to a small block, one repeat
(the smoke test's setting: the figures then say nothing about speed).

Each method is its own subprocess of this script, reads the same two files and the moving label map,
and writes at least the ANTs job's outputs (warped image, forward and inverse warps, warped labels):

- ``unireg --threads T register FIXED MOVING -o OUT --labels L`` (defaults: every output, QC and report:
  also the Jacobian, the ANTs-style affine + deformable split, qc.png and report.html),
- the same with ``--fast``,
- with ``--same-files``, both again with ``--outputs warped,warp,inverse,labels``: the ANTs job's files
  exactly (and report.json, which UniReg always writes; no qc.png or report.html),
- ``held_out_peer.py ants FIXED MOVING OUT --labels L``: ``ants.registration(type_of_transform="SyN",
  aff_metric="mattes", syn_metric="mattes")``, antspyx's default iterations.

UniReg's bytecode is compiled first, as ``pip install`` does for a wheel (antspyx's already is).
Every process gets the same thread count (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``unireg --threads``).  Figures: whole-process wall seconds and peak RSS (MiB,
``os.wait4``), median over the repeats; GM/WM Dice of ``OUT/warped_labels.nii.gz`` against the fixed
labels; the ratio ANTs/UniReg and the Dice difference (UniReg - ANTs, points).  Run twice: quiet, then
"loaded" (two ``python -c "while True: pass"`` processes keep two cores busy; started and killed
here), each with the machine's load average.

Cross-check one pair of whole commands from outside with ``/usr/bin/time -v``, e.g. after
``python -c "from unireg.demo import make_demo_pair; make_demo_pair('/tmp/pair')"``::

    OMP_NUM_THREADS=2 /usr/bin/time -v unireg --threads 2 register /tmp/pair/fixed_t1.nii.gz \\
        /tmp/pair/moving_t2.nii.gz -o /tmp/u --labels /tmp/pair/moving_t2_labels.nii.gz
    OMP_NUM_THREADS=2 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2 /usr/bin/time -v python benchmarks/held_out_peer.py \\
        ants /tmp/pair/fixed_t1.nii.gz /tmp/pair/moving_t2.nii.gz /tmp/a --labels /tmp/pair/moving_t2_labels.nii.gz
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GM_WM = (1, 2)
QUICK_CROP = (slice(20, 68), slice(28, 84), slice(20, 68))  # a block of the 2 mm pair, through the brain


def timed_process(cmd, env) -> dict:
    """Run ``cmd``; wall seconds and the child's max RSS (MiB) from ``os.wait4``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read()
    p.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({code}):\n{err[-3000:]}")
    return {"wall_s": wall, "peak_mib": ru.ru_maxrss / 1024.0}


def make_pair(work: Path, quick: bool) -> dict:
    """The demo pair, written by a child process: this one stays small (a child's peak RSS reported by
    ``os.wait4`` cannot read below its parent's RSS at the fork, Linux keeps it across exec)."""
    out = work / "pair"
    code = ("import json, sys; from pathlib import Path; import speed; "
            "print(json.dumps({k: str(v) for k, v in speed._write_pair(Path(sys.argv[1]), sys.argv[2] == '1').items()}))")
    r = subprocess.run([sys.executable, "-c", code, str(out), "1" if quick else "0"], capture_output=True, text=True,
                       cwd=HERE, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])))
    if r.returncode != 0:
        raise RuntimeError(f"writing the demo pair failed:\n{r.stderr[-3000:]}")
    return {k: Path(v) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def _write_pair(out: Path, quick: bool) -> dict:
    from unireg.demo import make_demo_pair

    paths = make_demo_pair(out, spacing=2.0 if quick else None)
    if quick:
        import nibabel as nib

        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            img = nib.load(str(paths[key]))
            nib.save(img.slicer[QUICK_CROP], str(paths[key]))
    return paths


def gm_wm_dice(fixed_labels: Path, warped_labels: Path) -> float:
    """Mean Dice of grey and white matter (labels 1, 2), computed in a child process (see make_pair)."""
    code = ("import sys, numpy as np, nibabel as nib; "
            "f, w = (np.asarray(nib.load(p).dataobj).astype(int) for p in sys.argv[1:3]); "
            "print(np.mean([2 * ((f == k) & (w == k)).sum() / max((f == k).sum() + (w == k).sum(), 1) "
            f"for k in {GM_WM!r}]))")
    r = subprocess.run([sys.executable, "-c", code, str(fixed_labels), str(warped_labels)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"Dice of {warped_labels} failed:\n{r.stderr[-2000:]}")
    return float(r.stdout.strip())


def unireg_command() -> list[str]:
    """The ``unireg`` console script as installed, or the same entry point through this interpreter."""
    unireg = shutil.which("unireg")
    return [unireg] if unireg else [sys.executable, "-c", "from unireg.cli.main import main; main()"]


# what held_out_peer.py's ANTs job writes (warped image, forward and inverse warps, warped labels; UniReg's
# report.json is always written): ``--same-files`` adds the UniReg rows that write only these
SAME_FILES = "warped,warp,inverse,labels"


def commands(paths: dict, out: Path, threads: int, same_files: bool = False) -> dict:
    base = unireg_command() + ["--threads", str(threads), "register", str(paths["fixed"]), str(paths["moving"]),
                  "--labels", str(paths["moving_labels"]), "-o"]
    same = {
        "unireg_same_files": base + [str(out / "unireg_same_files"), "--outputs", SAME_FILES],
        "unireg_fast_same_files": base + [str(out / "unireg_fast_same_files"), "--fast", "--outputs", SAME_FILES],
    }
    return {
        "unireg": base + [str(out / "unireg")],
        "unireg_fast": base + [str(out / "unireg_fast"), "--fast"],
        **(same if same_files else {}),
        "ants": [sys.executable, str(HERE / "held_out_peer.py"), "ants", str(paths["fixed"]), str(paths["moving"]),
                 str(out / "ants"), "--metric", "mattes", "--threads", str(threads),
                 "--labels", str(paths["moving_labels"])],
    }


def run_phase(paths: dict, work: Path, threads: int, repeats: int, same_files: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    runs: dict[str, list] = {}
    for r in range(repeats):
        for name, cmd in commands(paths, work, threads, same_files).items():  # interleaved: drift hits all alike
            shutil.rmtree(work / name, ignore_errors=True)
            res = timed_process(cmd, env)
            res["dice_gm_wm"] = gm_wm_dice(paths["fixed_labels"], work / name / "warped_labels.nii.gz")
            runs.setdefault(name, []).append(res)
            print(f"  repeat {r + 1}/{repeats} {name}: {res['wall_s']:.1f} s, {res['peak_mib']:.0f} MiB, "
                  f"GM/WM Dice {res['dice_gm_wm']:.3f}", flush=True)
    return {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} | {"runs": rs} for name, rs in runs.items()}


class Busy:
    """Two processes spinning on the CPU for the duration of a ``with`` block."""

    def __init__(self, n: int = 2):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def table(title: str, res: dict, load: tuple) -> str:
    a = res["ants"]
    lines = [f"### {title} (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", "",
             "| method | median s | peak MiB | GM/WM Dice | ANTs/UniReg | Dice - ANTs (points) |",
             "|---|---|---|---|---|---|"]
    for name in [n for n in res if n != "ants"] + ["ants"]:
        m = res[name]
        ratio = a["wall_s"] / m["wall_s"]
        diff = 100 * (m["dice_gm_wm"] - a["dice_gm_wm"])
        lines.append(f"| {name} | {m['wall_s']:.1f} | {m['peak_mib']:.0f} | {m['dice_gm_wm']:.3f} | "
                     f"{ratio:.2f}x | {diff:+.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="unireg register (default, --fast) vs ANTs SyN-MI, whole processes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 mm crop, 1 repeat (smoke test)")
    ap.add_argument("--no-load", action="store_true", help="skip the loaded run")
    ap.add_argument("--same-files", action="store_true",
                    help=f"also UniReg writing only what the ANTs job writes (--outputs {SAME_FILES})")
    ap.add_argument("--work", type=Path, default=None, help="folder for the pair and outputs (default: temporary)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    repeats = 1 if a.quick else a.repeats
    # the package's bytecode, as a wheel install writes it (an editable checkout under
    # PYTHONDONTWRITEBYTECODE, as on this project's machines, would compile ~60 modules per process: ~0.3 s)
    import compileall

    import unireg

    compileall.compile_dir(str(Path(unireg.__file__).parent), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        paths = make_pair(work, a.quick)
        phases = {}
        print("quiet:", flush=True)
        load = os.getloadavg()
        phases["quiet"] = {"load": load, "results": run_phase(paths, work / "quiet", a.threads, repeats, a.same_files)}
        print(table("quiet", phases["quiet"]["results"], load), flush=True)
        if not a.no_load:
            print("loaded (2 busy processes):", flush=True)
            with Busy(2):
                time.sleep(1.0)
                res = run_phase(paths, work / "loaded", a.threads, repeats, a.same_files)
                load = os.getloadavg()
            phases["loaded"] = {"load": load, "results": res}
            print(table("loaded, 2 busy processes", res, load), flush=True)
            for name in [n for n in res if n != "ants"]:
                q = phases["quiet"]["results"]["ants"]["wall_s"] / phases["quiet"]["results"][name]["wall_s"]
                lo = res["ants"]["wall_s"] / res[name]["wall_s"]
                print(f"{name}: loaded ratio / quiet ratio = {lo / q:.2f}")
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            cfg = {"threads": a.threads, "repeats": repeats, "quick": a.quick, "cpus": os.cpu_count()}
            a.out.write_text(json.dumps({"config": cfg, "phases": phases}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
