"""The interpolation names and defaults of ``unireg apply`` (one place for the CLI, which decides
before torch loads, and :func:`unireg.api.apply`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unireg.errors import UniRegError
from unireg.interpolation import INTERPOLATIONS, check_interpolation, reads_labels


def test_defaults_and_names():
    assert check_interpolation(None) == "linear"
    assert check_interpolation(None, labels=True) == "labelwise"
    for name in INTERPOLATIONS:
        assert check_interpolation(name) == name and check_interpolation(name, labels=True) == name
    with pytest.raises(UniRegError, match="unknown interpolation 'cubic'; choose one of linear, bspline"):
        check_interpolation("cubic")


def test_when_the_image_is_read_as_a_label_map():
    assert reads_labels(chain=False, labels=True, interp="labelwise")
    assert reads_labels(chain=True, labels=True, interp="nearest")
    assert reads_labels(chain=True, labels=False, interp="labelwise")  # -t chain with -n labelwise
    assert not reads_labels(chain=False, labels=False, interp="labelwise")  # a warp file: only with --labels
    assert not reads_labels(chain=True, labels=False, interp="linear")


def test_imports_neither_numpy_nor_torch():
    code = "import sys, unireg.interpolation; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
