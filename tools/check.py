#!/usr/bin/env python
"""The project's one check command (README, .ci/run): ruff and mypy baselines, the import layers
contract, then pytest with the arguments given.

    python tools/check.py                 # everything, default test selection (-m 'not slow')
    python tools/check.py tests/io -x     # arguments after the script go to pytest

Runs every step even after a failure (so one run shows all problems), prints each step's time,
and exits non-zero if any step failed.  ``src/`` is put first on ``PYTHONPATH`` so that the checked
code is this checkout's, whatever copy of the package is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def main(pytest_args: list[str]) -> int:
    py = sys.executable
    steps = [
        ("ruff (baseline)", [py, str(ROOT / "tools" / "check_baseline.py"), "ruff"]),
        ("mypy (baseline)", [py, str(ROOT / "tools" / "check_baseline.py"), "mypy"]),
        ("import layers", [py, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                           "--no-cache", "--no-logo"]),
        ("pytest", [py, "-m", "pytest", "-q", *pytest_args]),
    ]
    results = []
    for name, cmd in steps:
        print(f"==> {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=_env()).returncode
        results.append((name, rc, time.perf_counter() - t0))
    print("\n==> summary")
    for name, rc, dt in results:
        print(f"  {'ok  ' if rc == 0 else 'FAIL'}  {name:<16} {dt:6.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
