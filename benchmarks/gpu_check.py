"""One prepared check for a GPU machine (issue #12): the 1 mm MNI demo pair on ``--device cuda``.

    python benchmarks/gpu_check.py                  # on the GPU machine: table + targets, exit 1 if missed
    python benchmarks/gpu_check.py --dry-run        # without CUDA: says why, exits 0
    python benchmarks/gpu_check.py --device cpu --quick   # the same path end to end on CPU (smoke test)

Runs ``unireg.api.register`` twice in this process (the second call has a warm CUDA context and is the
one timed), prints its per-stage seconds from ``report["runtime_s"]`` (the stage timer synchronises the
device, so GPU work is billed to its own stage), then times the whole ``unireg register --device cuda``
CLI (every default output written) as a subprocess.  Targets on CUDA: call < 1 s, CLI < 3 s.
Prints the card's name: quote it beside the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_CALL_S = 1.0
TARGET_CLI_S = 3.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry-run", action="store_true", help="exit 0 (after saying why) where CUDA is missing")
    ap.add_argument("--quick", action="store_true", help="a small crop of the 2 mm pair (smoke test)")
    a = ap.parse_args(argv)

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, cuda build {torch.version.cuda}): "
              "run it on a GPU machine, or with --device cpu to exercise the script")
        return 0 if a.dry_run else 2
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    sys.path.insert(0, str(HERE))
    from speed import _write_pair, gm_wm_dice, unireg_command

    from unireg import api

    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_pair(Path(tmp) / "pair", a.quick)
        calls = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = api.register(str(paths["fixed"]), str(paths["moving"]), labels=str(paths["moving_labels"]),
                               device=a.device)
            if a.device == "cuda":
                torch.cuda.synchronize()
            calls.append(time.perf_counter() - t0)
        stages = res.report["runtime_s"]
        print(f"device: {card}; pair: {'quick crop' if a.quick else '1 mm MNI demo pair'}")
        print("| stage | seconds (2nd call) |\n|---|---|")
        for k, v in stages.items():
            if k != "total":
                print(f"| {k} | {v:.3f} |")
        print(f"| **total** | **{stages.get('total', sum(stages.values())):.3f}** |")
        print(f"api.register: 1st call {calls[0]:.2f} s, 2nd call {calls[1]:.2f} s")
        t0 = time.perf_counter()
        api.register(str(paths["fixed"]), str(paths["moving"]), labels=str(paths["moving_labels"]),
                     device=a.device, fast=True)
        if a.device == "cuda":
            torch.cuda.synchronize()
        print(f"api.register --fast (warm): {time.perf_counter() - t0:.2f} s")

        cli = unireg_command() + [
            "register", str(paths["fixed"]), str(paths["moving"]), "--labels", str(paths["moving_labels"]),
            "-o", str(Path(tmp) / "out"), "--device", a.device]
        secs = {}
        for name, extra in (("default", []), ("--fast", ["--fast"])):
            t0 = time.perf_counter()
            r = subprocess.run(cli[:-3] + [str(Path(tmp) / f"out{len(secs)}")] + cli[-2:] + extra,
                               capture_output=True, text=True)
            secs[name] = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"gpu_check: the CLI failed ({r.returncode}): {r.stderr.strip()[-500:]}")
                return 1
            dice = gm_wm_dice(paths["fixed_labels"], Path(tmp) / f"out{len(secs) - 1}" / "warped_labels.nii.gz")
            print(f"whole CLI (unireg register --device {a.device} {' '.join(extra)}, every default output): "
                  f"{secs[name]:.2f} s, GM/WM Dice {dice:.3f}")
            # the CLI's own timeline (stage=NAME t=SECONDS since its start): where the rest of the time goes
            marks = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("stage=")]
            print("  CLI timeline (s since the first stage): "
                  + ", ".join(f"{m[0][6:]} {t[2:]}" for m in marks for t in m[1:] if t.startswith("t=")))
        cli_s = secs["default"]

    if a.device != "cuda":
        print("targets (call < 1 s, CLI < 3 s) apply to --device cuda only: not checked")
        return 0
    ok_call, ok_cli = calls[1] < TARGET_CALL_S, cli_s < TARGET_CLI_S
    print(f"target call < {TARGET_CALL_S} s: {'PASS' if ok_call else 'FAIL'} ({calls[1]:.2f} s); "
          f"target CLI < {TARGET_CLI_S} s: {'PASS' if ok_cli else 'FAIL'} ({cli_s:.2f} s) on {card}")
    return 0 if ok_call and ok_cli else 1


if __name__ == "__main__":
    sys.exit(main())
