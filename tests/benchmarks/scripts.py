"""A benchmark script (``benchmarks/NAME.py``, not a package module) imported by path, for its helpers."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def needs(script: Path, *packages: str) -> list:
    """A test module's ``pytestmark`` for a benchmark script: skipped where the script is absent (an installed
    package without the repository) or one of ``packages`` (the ``bench`` extra's) is not installed."""
    import pytest

    marks = [pytest.mark.skipif(not script.is_file(), reason="benchmarks/ not present")]
    return marks + [pytest.mark.skipif(importlib.util.find_spec(p) is None, reason=f"{p} (bench extra) not installed")
                    for p in packages]
