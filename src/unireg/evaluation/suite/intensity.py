"""Intensity maps applied to the moving image (inputs and outputs in ~[0, 1]), plus bias and noise.

Families (``INTENSITY_FAMILIES``): ``gamma`` (monotonic ``x**g``), ``inverted`` (bright becomes dark,
background stays dark), ``piecewise`` (random non-monotonic piecewise-linear map), ``t2``/``pd``/
``flair`` (``unireg.data.synth.CONTRASTS``, with a per-pair jitter of the knots' values), ``ct`` (a
CT-like map defined HERE, not the one in ``CONTRASTS``: low soft-tissue contrast, fluid dark).
A smooth multiplicative bias field (world coordinates, so it is grid-agnostic) and Gaussian noise are
added to every moving image.
"""

from __future__ import annotations

import numpy as np

from ...data.synth import CONTRASTS

__all__ = ["INTENSITY_FAMILIES", "draw_intensity", "apply_map", "bias_field_world"]

INTENSITY_FAMILIES = ("gamma", "inverted", "piecewise", "t2", "pd", "flair", "ct")
# CT-like from a T1 in [0,1]: background 0, fluid (0.1-0.3) ~ water, GM a little brighter than WM, fat dark
_CT_KNOTS = ([0.0, 0.04, 0.12, 0.3, 0.55, 0.7, 0.9, 1.0], [0.0, 0.55, 0.30, 0.32, 0.47, 0.44, 0.40, 0.10])


def apply_map(x: np.ndarray, knots: tuple) -> np.ndarray:
    """Piecewise-linear map through ``(xs, ys)`` (clamped outside [xs[0], xs[-1]])."""
    xs, ys = knots
    return np.interp(np.clip(x, xs[0], xs[-1]), xs, ys).astype(np.float32)


def draw_intensity(family: str, rng: np.random.Generator) -> tuple[tuple, dict]:
    """Draw one map of ``family``: returns ``(xs, ys)`` knots and a description."""
    if family == "gamma":
        g = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        xs = np.linspace(0, 1, 65)
        return (xs.tolist(), (xs**g).tolist()), {"intensity": "gamma", "gamma": round(g, 3)}
    if family == "inverted":
        knee = float(rng.uniform(0.04, 0.1))
        return ([0.0, knee, 1.0], [0.0, 1.0, float(rng.uniform(0.05, 0.2))]), {
            "intensity": "inverted",
            "knee": round(knee, 3),
        }
    if family == "piecewise":
        while True:  # non-monotonic by construction: at least one rise and one fall between the knots
            n = int(rng.integers(5, 9))
            xs = np.concatenate([[0.0, 0.05], np.sort(rng.uniform(0.08, 1.0, n - 2)), [1.0]])
            ys = np.concatenate([[0.0], rng.uniform(0.05, 1.0, n)])
            d = np.diff(ys[1:])
            if (d > 0.1).any() and (d < -0.1).any():
                break
        return (xs.tolist(), ys.tolist()), {"intensity": "piecewise", "knots": int(n)}
    if family in ("t2", "pd", "flair"):
        cx, cy = CONTRASTS[family]
        jit = np.clip(np.asarray(cy) + np.r_[0.0, rng.uniform(-0.05, 0.05, len(cy) - 1)], 0, 1)
        return (list(cx), jit.tolist()), {"intensity": family}
    if family == "ct":
        cx, cy = _CT_KNOTS
        jit = np.clip(np.asarray(cy) + np.r_[0.0, rng.uniform(-0.03, 0.03, len(cy) - 1)], 0, 1)
        return (list(cx), jit.tolist()), {"intensity": "ct"}
    raise ValueError(f"unknown intensity family {family!r}; choose from {INTENSITY_FAMILIES}")


def bias_field_world(points: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``exp(strength * s(p))`` at world points ``(N, nd)``, ``s`` a sum of 4 random plane waves
    (wavelengths 150-400 mm), normalised to [-1, 1]."""
    nd = points.shape[1]
    s: np.ndarray = np.zeros(len(points))
    for _ in range(4):
        k = rng.normal(size=nd)
        k = k / float(np.linalg.norm(k)) * 2 * np.pi / rng.uniform(150, 400)
        s += np.cos(points @ k + rng.uniform(0, 2 * np.pi))
    return np.exp(strength * s / 4.0).astype(np.float32)
