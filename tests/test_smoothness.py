"""``smoothness``: a larger value gives a smoother deformation (lower gradient energy and SD log det J)."""

from __future__ import annotations

import numpy as np
import torch

from unireg import api

from .synthetic_pairs import grid_affine, phantom, tiny_registrar

torch.set_num_threads(1)


def test_smoothness_is_monotone():
    shape = (40, 40)
    a = grid_affine(shape, (1.0, 1.0), np.eye(2), (0.0, 0.0))
    f, _ = phantom(shape, a, (0.0, 0.0))
    # a non-rigid moving image: the top of the phantom moved one way, the bottom another
    up, _ = phantom(shape, a, (0.0, 0.0), shift=(3.0, 0.0))
    down, _ = phantom(shape, a, (0.0, 0.0), shift=(-3.0, 1.0))
    w = np.linspace(0.0, 1.0, shape[0])[:, None]
    m = (w * up + (1 - w) * down).astype(np.float32)
    energy, sdlogj = [], []
    for s in (0.1, 0.3, 1.0, 3.0, 10.0):
        r = api.register((f, a), (m, a), model=tiny_registrar(2, 1.0), refine=30, affine=False, smoothness=s,
                         qc=False, seed=0)
        energy.append(sum(float((np.diff(r.warp_mm, axis=k) ** 2).mean()) for k in (1, 2)))
        sdlogj.append(r.report["sdlogj"])
    assert all(a > b for a, b in zip(energy, energy[1:])), energy
    assert all(a > b for a, b in zip(sdlogj, sdlogj[1:])), sdlogj
    assert energy[0] > 10 * energy[-1]  # measured ~90x between 0.1 and 10
