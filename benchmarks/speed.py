"""Speed and memory of UniReg against ANTs SyN on the same 1 mm MNI pair, in one run.

    python benchmarks/speed.py [--threads 2] [--contrast t2] [--refine 0]

The pair is ``unireg.demo.make_demo_pair`` (MNI ICBM152 T1, 197x233x189 at 1 mm, against a deformed
T2-like copy).  Measured, each in its own process (peak memory = that process's max RSS from
``os.wait4``; the in-call figures come from the worker's own psutil sampling):

- UniReg **network only**: ``report.json`` ``runtime_s.network`` (the UNet forward pass);
- UniReg **registration call**: ``unireg.api.register`` (resample to the 2 mm working grid, affine,
  features, network, integration, resampling the image and both warps at 1 mm) -- no imports, no I/O;
- UniReg **end to end**: ``unireg register FIXED MOVING -o OUT --no-qc`` as a subprocess: Python start,
  imports, reading, everything above, writing warped image, warp, inverse warp, Jacobian and report;
- ANTs SyN (Mattes MI, affine + SyN, default iterations): the ``ants.registration`` call (+ composing the
  field), and end to end = a worker process that imports ANTsPy, reads, registers and writes the warp.

Writes ``benchmarks/results/speed.md`` (+ ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def timed_process(cmd, env) -> dict:
    """Run ``cmd``; wall seconds and the child's max RSS (MiB) from ``os.wait4``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "max_rss_mb": ru.ru_maxrss / 1024.0, "stdout": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="UniReg vs ANTs SyN: time and memory on one 1 mm MNI pair")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contrast", default="t2")
    ap.add_argument("--refine", type=int, default=0)
    ap.add_argument("--model", default=None, help="3-D checkpoint (default: the shipped model)")
    ap.add_argument("--skip-ants", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed.md")
    a = ap.parse_args(argv)

    from common import machine_description

    from unireg.demo import make_demo_pair

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(a.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    load_before = os.getloadavg()
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="unireg-speed-") as tmp:
        tmp = Path(tmp)
        paths = make_demo_pair(tmp / "pair", contrast=a.contrast, seed=0)
        pair = tmp / "bench_pair"  # run_method.py's layout
        pair.mkdir()
        os.symlink(paths["fixed"], pair / "fixed.nii.gz")
        os.symlink(paths["moving"], pair / "moving.nii.gz")

        # UniReg end to end, exactly what a user runs
        cmd = [sys.executable, "-m", "unireg.cli.main", "--threads", str(a.threads), "register", str(paths["fixed"]),
               str(paths["moving"]), "-o", str(tmp / "unireg_e2e"), "--no-qc"]
        if a.model:
            cmd += ["--model", a.model]
        cmd += ["--refine", str(a.refine)]  # explicit: an untrained default model would otherwise refine 100
        e2e = timed_process(cmd, env)
        rep = json.loads((tmp / "unireg_e2e" / "report.json").read_text())
        res["unireg"] = {"end_to_end_s": e2e["wall_s"], "end_to_end_peak_mb": e2e["max_rss_mb"],
                         "runtime_parts_s": rep["runtime_s"], "network_s": rep["runtime_s"].get("network"),
                         "model": rep.get("model"), "working_grid": rep.get("working_grid")}
        # UniReg registration call alone (worker)
        cmd = [sys.executable, str(HERE / "run_method.py"), "unireg", str(pair), str(tmp / "unireg_call"),
               "--threads", str(a.threads), "--refine", str(a.refine)] + (["--model", a.model] if a.model else [])
        w = timed_process(cmd, env)
        wrep = json.loads((tmp / "unireg_call" / "report.json").read_text())
        res["unireg"].update({"call_s": wrep["runtime_s"]["total"], "call_peak_mb": wrep["peak_rss_mb"],
                              "worker_wall_s": w["wall_s"], "worker_max_rss_mb": w["max_rss_mb"]})
        if not a.skip_ants:
            cmd = [sys.executable, str(HERE / "run_method.py"), "ants", str(pair), str(tmp / "ants"), "--threads", str(a.threads)]
            w = timed_process(cmd, env)
            arep = json.loads((tmp / "ants" / "report.json").read_text())
            res["ants"] = {"call_s": arep["runtime_s"]["total"], "call_peak_mb": arep["peak_rss_mb"],
                           "end_to_end_s": w["wall_s"], "end_to_end_peak_mb": w["max_rss_mb"]}
    load_after = os.getloadavg()
    u, an = res["unireg"], res.get("ants")
    if a.model:
        import torch

        meta = torch.load(a.model, map_location="cpu", weights_only=False)["config"].get("meta", {})
        u["model"] = f"{a.model} ({meta.get('steps', '?')} training steps)"
    lines = ["# Speed and memory: UniReg vs ANTs SyN on one 1 mm MNI pair", "",
             f"Command: `python benchmarks/speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
             f"Machine: {machine_description()}; {a.threads} thread(s) for every method.  ",
             f"Load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
             "(other jobs shared the CPU when it was above the core count: read the ratios, not the absolute times).  ",
             f"Pair: `unireg.demo.make_demo_pair(contrast='{a.contrast}', seed=0)` — MNI T1 197x233x189 at 1 mm vs a deformed "
             f"{a.contrast.upper()}-like copy.  UniReg model: {u['model']}, working grid {u['working_grid']}, refine {a.refine}.", "",
             "| figure | UniReg | ANTs SyN (MI) | ANTs / UniReg |", "|---|---|---|---|"]

    def row(name, uv, av, unit="s", nd=2):
        ratio = f"{av / uv:.1f}x" if av is not None and uv else "–"
        lines.append(f"| {name} | {uv:.{nd}f} {unit} | {'–' if av is None else f'{av:.{nd}f} {unit}'} | {ratio} |")

    lines.append(f"| network forward pass only | {u['network_s']:.2f} s | – | – |")
    row("registration call (no imports, no I/O)", u["call_s"], an and an["call_s"])
    row("end to end (process: start, imports, read, register, write)", u["end_to_end_s"], an and an["end_to_end_s"])
    row("peak memory, registration call (sampled)", u["call_peak_mb"], an and an["call_peak_mb"], "MiB", 0)
    row("peak memory, end to end (max RSS)", u["end_to_end_peak_mb"], an and an["end_to_end_peak_mb"], "MiB", 0)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in u["runtime_parts_s"].items())
    lines += ["", f"UniReg end-to-end breakdown (report.json, s): {parts}.",
              "UniReg end to end writes four float32 volumes (warped, warp, inverse warp, Jacobian) and report.json;",
              "the ANTs end-to-end process writes only the composed warp, so the comparison favours ANTs there.", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    a.out.with_suffix(".json").write_text(json.dumps({"results": res, "threads": a.threads, "load_before": load_before,
                                                      "load_after": load_after, "machine": machine_description()}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
