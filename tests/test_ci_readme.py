"""CI runs exactly the README's test command, and that command runs the static checks."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    for line in (ROOT / "README.md").read_text().splitlines():
        if re.match(r'pip install -e "\.\[test(,bench)?\]"', line):
            return line.split("#")[0].strip()
    raise AssertionError("README has no test command")


def test_ci_runs_the_readme_test_command():
    cmd = _readme_test_command()
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == cmd


def test_check_command_runs_ruff_mypy_import_linter_and_pytest():
    assert _readme_test_command().endswith("python tools/check.py")
    src = (ROOT / "tools" / "check.py").read_text()
    for step in ('"ruff"', '"mypy"', "lint_imports_command", '"pytest"'):
        assert step in src
    extras = re.search(r"^test = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for pkg in ("ruff==", "mypy==", "import-linter=="):
        assert pkg in extras
