#!/usr/bin/env python
"""Lint and type baselines that only shrink.

``tools/lint_baseline.json`` holds the violations the code had when the checks were introduced:
ruff counts per (file, rule) and mypy error counts per file, for ``src/unireg``.  This script runs
the tools and fails when any count rises above its baseline or a file/rule absent from the baseline
has violations, so new code is clean while old code is fixed file by file (no mass reformat).

    python tools/check_baseline.py            # ruff and mypy; exit 1 on any growth
    python tools/check_baseline.py ruff       # one tool
    python tools/check_baseline.py --shrink   # after fixing: lower the baseline to the current counts

When a count falls below its baseline it says "baseline can shrink" (run ``--shrink`` and commit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "src/unireg"
BASELINE = ROOT / "tools" / "lint_baseline.json"
_MYPY_LINE = re.compile(r"^(?P<file>[^:\n]+\.py):\d+(?::\d+)?: error: .*$", re.M)


def _rel(path: str) -> str:
    p = Path(path)
    return (p.resolve().relative_to(ROOT) if p.is_absolute() else p).as_posix()


def ruff_counts() -> dict[str, dict[str, int]]:
    """``{file: {rule: count}}`` of ``ruff check src/unireg`` (config from pyproject.toml)."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", TARGET, "--output-format", "json", "--exit-zero"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"ruff failed to run:\n{r.stderr}")
    out: dict[str, Counter] = {}
    for v in json.loads(r.stdout or "[]"):
        out.setdefault(_rel(v["filename"]), Counter())[v["code"] or "syntax"] += 1
    return {f: dict(sorted(c.items())) for f, c in sorted(out.items())}


def mypy_counts() -> dict[str, int]:
    """``{file: errors}`` of ``mypy src/unireg`` (config from pyproject.toml)."""
    env = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "mypy", TARGET, "--no-error-summary", "--no-pretty"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode not in (0, 1):  # 1: type errors found; 2: mypy itself failed
        raise SystemExit(f"mypy failed to run:\n{r.stdout}{r.stderr}")
    c = Counter(_rel(m.group("file")) for m in _MYPY_LINE.finditer(r.stdout))
    return dict(sorted(c.items()))


def compare(kind: str, current: dict, base: dict) -> tuple[list[str], list[str]]:
    """``(errors, hints)``: counts above the baseline, and counts that fell below it."""
    errors, hints = [], []
    flat_cur = _flatten(current)
    flat_base = _flatten(base)
    for key, n in sorted(flat_cur.items()):
        allowed = flat_base.get(key, 0)
        if n > allowed:
            where = " ".join(key)
            errors.append(f"{kind}: {where}: {n} violation(s), baseline allows {allowed}")
    for key, allowed in sorted(flat_base.items()):
        n = flat_cur.get(key, 0)
        if n < allowed:
            hints.append(f"{kind}: {' '.join(key)}: {n} < baseline {allowed}: baseline can shrink")
    return errors, hints


def _flatten(d: dict) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for f, v in d.items():
        if isinstance(v, dict):
            for rule, n in v.items():
                out[(f, rule)] = int(n)
        else:
            out[(f,)] = int(v)
    return out


def _shrunk(current: dict, base: dict) -> dict:
    """The baseline lowered to the current counts (never raised; clean entries dropped)."""
    out: dict = {}
    for f, v in base.items():
        if isinstance(v, dict):
            kept = {r: min(n, current.get(f, {}).get(r, 0)) for r, n in v.items()}
            kept = {r: n for r, n in kept.items() if n > 0}
            if kept:
                out[f] = kept
        else:
            n = min(int(v), int(current.get(f, 0)))
            if n > 0:
                out[f] = n
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tools", nargs="*", metavar="ruff|mypy", help="which checks (default: both)")
    ap.add_argument("--shrink", action="store_true", help="lower the baseline to the current counts")
    ap.add_argument("--init", action="store_true", help="write the baseline from scratch (first introduction only)")
    args = ap.parse_args(argv)
    tools = args.tools or ["ruff", "mypy"]
    if set(tools) - {"ruff", "mypy"}:
        ap.error(f"unknown check(s): {sorted(set(tools) - {'ruff', 'mypy'})}; choose ruff and/or mypy")
    base = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {"ruff": {}, "mypy": {}}
    runners = {"ruff": ruff_counts, "mypy": mypy_counts}
    failed = False
    for tool in tools:
        current = runners[tool]()
        if args.init:
            base[tool] = current
            continue
        errors, hints = compare(tool, current, base.get(tool, {}))
        for line in errors:
            print(line)
        for line in hints:
            print(line)
        if args.shrink:
            base[tool] = _shrunk(current, base.get(tool, {}))
        total = sum(_flatten(current).values())
        print(f"{tool}: {total} violation(s) in total, {'FAILED: above baseline' if errors else 'within baseline'}")
        failed |= bool(errors)
    if args.init or args.shrink:
        BASELINE.write_text(json.dumps(base, indent=1, sort_keys=True) + "\n")
        print(f"wrote {BASELINE.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
