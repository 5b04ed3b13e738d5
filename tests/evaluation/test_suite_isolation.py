"""HELD OUT MEANS HELD OUT: no training or data-synthesis module may import the held-out suite, and the
suite must not import training code (another worker broadens the training prior)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "unireg"
SUITE = "unireg.evaluation.suite"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved; ``from a import b``
    yields both ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__"):
            out.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return out


def _files(sub: str):
    return sorted((SRC / sub).rglob("*.py"))


@pytest.mark.parametrize("sub", ["training", "data"])
def test_training_and_data_do_not_import_the_suite(sub):
    files = _files(sub)
    assert files, f"no modules under src/unireg/{sub}"
    bad = {str(f.relative_to(SRC)): sorted(m for m in imported_modules(f) if m == SUITE or m.startswith(SUITE + "."))
           for f in files}
    assert not {k: v for k, v in bad.items() if v}, f"training code imports the held-out suite: {bad}"


def test_suite_does_not_import_training():
    files = _files("evaluation/suite")
    assert len(files) >= 5
    bad = {str(f.relative_to(SRC)): sorted(m for m in imported_modules(f) if m.startswith("unireg.training"))
           for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_training_names_no_held_out_family():
    """The training package must not even name a held-out family (e.g. a "ct" contrast or "bspline" field)."""
    from unireg.evaluation.suite.cases import HELD_OUT

    hits = []
    for f in _files("training"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in HELD_OUT:
                hits.append((str(f.relative_to(SRC)), node.value))
    assert not hits, f"held-out family names in training code: {hits}"


def test_detector_catches_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The check itself works: plant both import forms in a fake training module."""
    fake = SRC / "training" / "_planted_tmp.py"
    assert not fake.exists()
    fake.write_text("from ..evaluation.suite import cases\nimport unireg.evaluation.suite.deformations as d\n")
    try:
        mods = imported_modules(fake)
        assert "unireg.evaluation.suite" in mods and "unireg.evaluation.suite.deformations" in mods
        with pytest.raises(AssertionError):
            test_training_and_data_do_not_import_the_suite("training")
    finally:
        fake.unlink()
