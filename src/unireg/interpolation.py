"""The interpolation methods of ``unireg apply`` and :func:`unireg.api.apply`, and how each reads its
image; no numpy or torch here, so the command line can decide before torch loads."""

from __future__ import annotations

from .errors import UniRegError

__all__ = ["INTERPOLATIONS", "check_interpolation", "reads_labels"]

INTERPOLATIONS = ("linear", "bspline", "nearest", "labelwise")


def check_interpolation(interpolation: str | None, labels: bool = False) -> str:
    """``interpolation``, or its default (``labelwise`` for a label map, else ``linear``); an unknown
    name is a :class:`UniRegError`."""
    interp = interpolation or ("labelwise" if labels else "linear")
    if interp not in INTERPOLATIONS:
        raise UniRegError(f"unknown interpolation {interp!r}; choose one of {', '.join(INTERPOLATIONS)}")
    return interp


def reads_labels(chain: bool, labels: bool, interp: str) -> bool:
    """Whether ``apply`` reads its image as a label map (integers kept): with ``labels``, and with a
    transform chain (``-t``) also when the interpolation is ``labelwise``."""
    return bool(labels or (chain and interp == "labelwise"))
