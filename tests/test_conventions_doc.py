"""docs/conventions.md stays true: the tests it names exist, its layers are the import contract's."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "conventions.md").read_text()


def test_every_named_test_exists():
    refs = []
    for cell in DOC.split("|"):
        current = None
        for m in re.finditer(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", cell):
            if m.group(1):
                current = m.group(1)
            if m.group(2) or m.group(1):
                refs.append((current, m.group(2)))
    assert len(refs) > 15
    for path, name in refs:
        assert path is not None and (ROOT / path).is_file(), path
        if name:
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name}"


def test_layers_table_is_the_import_contract():
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    contract_layers = [[m.strip().removeprefix("unireg.") for m in re.split(r"[|:]", layer)]
                       for layer in reversed(contract["layers"])]
    rows = re.findall(r"^\| (\d+) \| (.+?) \| .+ \|$", DOC, re.M)
    doc_layers = [[m.strip(" `\\") for m in names.split("|")] for _, names in rows]
    assert doc_layers == contract_layers


def test_code_cites_this_file():
    assert "docs/conventions.md" in (ROOT / "src" / "unireg" / "spatial" / "grid.py").read_text()
