"""The inference-time regularity knob (`--smoothness`): Dice vs SDlogJ of the shipped 2-D model.

    python experiments/smoothness_knob.py [CHECKPOINT]

Held-out pairs from the training synthesizer (seeds 10,000,000+), T1 fixed, T2-like moving.
"""

import sys

import numpy as np
import torch

from unireg.models.registrar import load_registrar
from unireg.spatial.jacobian import folding_stats, jacobian_determinant
from unireg.training.dataset import PairSynthesizer
from unireg.training.trainer import validate

torch.set_num_threads(1)
path = sys.argv[1] if len(sys.argv) > 1 else "src/unireg/weights/unireg_2d.pt"
m = load_registrar(path)
crop = [160, 192] if m.ndim == 2 else [64, 64, 64]
s = PairSynthesizer(m.ndim, m.working["spacing"], crop, 8.0, ["t1"], 0.2, 0.02, 4, 0.04, 3)
print("| smoothness | Dice after (T2 moving) | SDlogJ | % folded |")
print("| --- | --- | --- | --- |")
for lam in [0.1, 0.3, 1.0, 3.0, 10.0]:
    r = validate(m, s, 16, smoothness=lam, moving_contrast="t2")
    sd = []
    with torch.no_grad():
        for i in range(16):
            b = s.batch([10_000_000 + i], "t2")
            d = m.displacement(m(m.extract(b["fixed"]), m.extract(b["moving"]), lam), b["fixed"].shape[2:])
            sd.append(folding_stats(jacobian_determinant(d))["sdlogj"])
    print(f"| {lam} | {r['dice_after']:.3f} | {np.mean(sd):.3f} | {r['folded_percent']:.4f} |")
