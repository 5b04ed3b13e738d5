"""The 3-D trainer must learn: a tiny 3-D configuration, fresh pairs every step, a few dozen CPU
steps, and the held-out validation Dice (network only) must rise clearly above no registration.

Only flags that every version of the trainer knows are used, so the same test can be run against
an old trainer (commit 04a8e4e, whose 3-D loss stayed flat: see weights/unireg_3d.md for its figure).
"""

import pytest
import torch

from unireg.models.registrar import load_registrar
from unireg.training.config import parse_config
from unireg.training.trainer import train

TINY_3D = ["--ndim", "3", "--spacing", "3", "--crop", "40", "40", "40", "--batch-size", "2", "--lr", "0.002",
           "--steps", "80", "--max-disp-mm", "12", "--val-pairs", "6", "--threads", "1", "--log-every", "10", "--checkpoint-every", "1000",
           "--seed", "0"]


# Two seeds, their mean gain: 80 CPU steps leave a seed-to-seed spread of +0.007 to +0.026 (seeds 0-3 on
# this project's 2-core machine, session 12), and seed 0 alone read +0.011 there for the code whose CI
# had passed with it above 0.012 (a machine or library difference in rounding), while the trainer whose
# loss stayed flat gained +0.001.
SEEDS = (0, 1)
MIN_MEAN_GAIN = 0.008


def test_tiny_3d_network_learns(tmp_path):
    gains = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        out = tmp_path / f"tiny3d_{seed}.pt"
        args = list(TINY_3D)
        args[args.index("--seed") + 1] = str(seed)
        train(parse_config(args + ["--out", str(out)]))
        val = load_registrar(out).meta["validation"]
        gain = val["dice_after"] - val["dice_before"]
        print(f"seed {seed}: validation Dice {val['dice_before']:.3f} -> {val['dice_after']:.3f} (gain {gain:+.3f})")
        assert gain > 0, val
        assert val["folded_percent"] < 0.5, val
        gains.append(gain)
    assert sum(gains) / len(gains) > MIN_MEAN_GAIN, gains
