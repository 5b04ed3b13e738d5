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


def test_tiny_3d_network_learns(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "tiny3d.pt"
    train(parse_config(TINY_3D + ["--out", str(out)]))
    val = load_registrar(out).meta["validation"]
    gain = val["dice_after"] - val["dice_before"]
    print(f"validation Dice {val['dice_before']:.3f} -> {val['dice_after']:.3f} (gain {gain:+.3f})")
    assert gain > 0.012, val
    assert val["folded_percent"] < 0.5, val
