"""Where a GPU registration's seconds go (issue #12): profiles to read, not a pass/fail check.

    python benchmarks/gpu_profile.py --out DIR                  # on the GPU machine
    python benchmarks/gpu_profile.py --out DIR --device cpu --quick   # the same path on a CPU (smoke test)

1. process start-up: ``import torch``, the CUDA context, ``import unireg.api`` and the report modules,
   each timed in a fresh interpreter, and ``python -X importtime``'s 25 slowest imports;
2. the whole ``unireg register`` CLI under cProfile (start-up, first-call warm-up, registration, writing):
   the 45 largest cumulative and 30 largest own times, and the CLI's own stage timeline;
3. ``api.register`` in one process: the first (cold) and a warm call under cProfile, and a warm call
   under ``torch.profiler`` (host and device time per operator, synchronising calls).
Everything is printed and written under ``--out`` (``*.prof`` load with ``pstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _fresh(code: str) -> float:
    """Seconds a fresh interpreter needs for ``code`` (its own clock, so Python's start is left out)."""
    prog = f"import time; t0 = time.perf_counter()\n{code}\nprint(time.perf_counter() - t0)"
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True)
    if r.returncode != 0:
        return float("nan")
    return float(r.stdout.strip().splitlines()[-1])


def _stats(prof: cProfile.Profile | str, out: Path, name: str, n_cum: int = 45, n_own: int = 30) -> None:
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s) if isinstance(prof, str) else pstats.Stats(prof, stream=s)
    st.strip_dirs().sort_stats("cumulative").print_stats(n_cum)
    st.sort_stats("tottime").print_stats(n_own)
    text = s.getvalue()
    (out / f"{name}.txt").write_text(text)
    if not isinstance(prof, str):
        prof.dump_stats(str(out / f"{name}.prof"))
    # the interesting part only: drop pstats' header lines
    print(f"--- {name}")
    print("\n".join(ln for ln in text.splitlines() if ln.strip() and "function calls" not in ln)[:9000])


def startup(out: Path, device: str) -> None:
    print("=== 1. process start-up (fresh interpreters)")
    rows = [
        ("import torch", "import torch"),
        (
            "import torch + CUDA context",
            "import torch\nif torch.cuda.is_available(): torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
        ),
        ("import unireg.cli.main", "import unireg.cli.main"),
        ("import unireg.api", "import unireg.api"),
        (
            "import unireg.api + outputs + reports",
            "import unireg.api, unireg.outputs\n"
            "from unireg.outputs import prefetch_report_modules\n"
            "prefetch_report_modules()",
        ),
        ("load the default 3-D model", "from unireg import api; api.load_model(None, ndim=3)"),
    ]
    for label, code in rows:
        print(f"{label}: {_fresh(code):.2f} s")
    # one fresh process, step by step (each figure: that step alone)
    split = (
        "import time\nt = [time.perf_counter()]\nimport torch\nt.append(time.perf_counter())\n"
        "from unireg import api\nt.append(time.perf_counter())\nm = api.load_model(None, ndim=3)\n"
        "t.append(time.perf_counter())\n"
        f"dev = {device!r}\n"
        "x = torch.zeros(1, device=dev)\nif dev == 'cuda': torch.cuda.synchronize()\n"
        "t.append(time.perf_counter())\n"
        "m = m.to(dev)\nt.append(time.perf_counter())\n"
        "names = ['import torch', 'import unireg.api', 'load_model', 'device context', 'model to device']\n"
        "print('; '.join(f'{n} {b - a:.2f} s' for n, a, b in zip(names, t, t[1:])))"
    )
    r = subprocess.run([sys.executable, "-c", split], capture_output=True, text=True)
    print("one process:", r.stdout.strip() or r.stderr.strip()[-300:])
    r = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import unireg.api, unireg.outputs; from unireg.outputs import prefetch_report_modules; "
            "prefetch_report_modules()",
        ],
        capture_output=True,
        text=True,
    )
    (out / "importtime.txt").write_text(r.stderr)
    rows = []
    for ln in r.stderr.splitlines():
        parts = ln.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    print("slowest imports (cumulative us | module):")
    for us, mod in sorted(rows, reverse=True)[:25]:
        print(f"  {us:>9d} | {mod}")


def cli(out: Path, paths: dict, device: str, tmp: Path) -> None:
    print("=== 2. the whole CLI under cProfile")
    for name, extra in (("cli_default", []), ("cli_fast", ["--fast"])):
        argv = [
            "unireg",
            "register",
            str(paths["fixed"]),
            str(paths["moving"]),
            "--labels",
            str(paths["moving_labels"]),
            "-o",
            str(tmp / name),
            "--device",
            device,
            *extra,
        ]
        code = (
            "import cProfile, sys, time\nt0 = time.perf_counter()\n"
            f"sys.argv = {argv!r}\npr = cProfile.Profile(); pr.enable()\n"
            "try:\n    from unireg.cli.main import app; app()\nexcept SystemExit:\n    pass\n"
            f"pr.disable(); pr.dump_stats({str(out / (name + '.prof'))!r})\n"
            "print('wall', time.perf_counter() - t0)"
        )
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (out / f"{name}.log").write_text(r.stdout + "\n" + r.stderr)
        marks = [ln for ln in r.stdout.splitlines() if ln.startswith("stage=")]
        print(f"{name}: {wall:.2f} s whole process (profiled), rc {r.returncode}; timeline: {' | '.join(marks)}")
        if (out / f"{name}.prof").exists():
            _stats(str(out / f"{name}.prof"), out, name)


def in_process(out: Path, paths: dict, device: str) -> None:
    import torch

    from unireg import api

    print("=== 3. api.register in one process")

    def call(**kw):
        t0 = time.perf_counter()
        res = api.register(
            str(paths["fixed"]), str(paths["moving"]), labels=str(paths["moving_labels"]), device=device, **kw
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return res, time.perf_counter() - t0

    def profiled(name: str, n_cum: int, n_own: int):
        pr = cProfile.Profile()
        pr.enable()
        res, secs = call()
        pr.disable()
        _stats(pr, out, name, n_cum, n_own)
        return res, secs

    res, t_cold = profiled("call_cold", 40, 25)
    print(f"cold call {t_cold:.2f} s; stages {res.report['runtime_s']}")
    res, t_warm = call()
    print(f"warm call {t_warm:.2f} s; stages {res.report['runtime_s']}")
    res, t_prof = profiled("call_warm", 60, 40)
    print(f"warm call under cProfile {t_prof:.2f} s")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as p:
        call()
    sort_dev = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    for key, n in (("self_cpu_time_total", 40), (sort_dev, 30)):
        t = p.key_averages().table(sort_by=key, row_limit=n, max_name_column_width=60)
        (out / f"torch_{key}.txt").write_text(t)
        print(f"--- torch.profiler by {key}\n{t}")
    try:
        p.export_chrome_trace(str(out / "trace.json"))
        if (out / "trace.json").stat().st_size > 40e6:  # too large to bring back: the tables above stand
            (out / "trace.json").unlink()
    except Exception as e:  # noqa: BLE001 - a trace is a bonus
        print("no chrome trace:", e)
    for kw in ({"fast": True},):
        res, t = call(**kw)
        print(f"warm call {kw}: {t:.2f} s; stages {res.report['runtime_s']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="a small crop of the 2 mm pair (smoke test)")
    ap.add_argument("--parts", default="startup,cli,call")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from speed import _write_pair

    parts = a.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_pair(Path(tmp) / "pair", a.quick)
        print(f"pair: {'quick crop' if a.quick else '1 mm MNI demo pair'}; device {a.device}; cores {os.cpu_count()}")
        if "startup" in parts:
            startup(a.out, a.device)
        if "cli" in parts:
            cli(a.out, paths, a.device, Path(tmp))
        if "call" in parts:
            in_process(a.out, paths, a.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
