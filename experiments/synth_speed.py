"""Pairs/s of the old per-pair synthesizer vs the batched torch one (same threads, same crop).

    python experiments/synth_speed.py --ndim 3 --crop 48 48 48 --batch 8 --threads 1 [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ndim", type=int, default=3)
    ap.add_argument("--crop", type=int, nargs="+", default=[48, 48, 48])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--label-stride", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from unireg.training.dataset import PairSynthesizer
    from unireg.training.synth_torch import TorchPairSynthesizer

    spacing = 2.0 if args.ndim == 3 else 1.0
    new = TorchPairSynthesizer(args.ndim, spacing, args.crop, device=args.device, label_stride=args.label_stride)
    new.batch(range(args.batch))  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in range(args.batches):
        new.batch(range(b * args.batch, (b + 1) * args.batch))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    new_rate = args.batches * args.batch / (time.perf_counter() - t)
    print(f"new (TorchPairSynthesizer, {args.device}, label_stride {args.label_stride}): {new_rate:.2f} pairs/s")
    if args.skip_old:
        return
    old = PairSynthesizer(args.ndim, spacing, args.crop, 8.0, ["t1"], 0.2, 0.02, 4.0, 0.04, 3.0)
    old.batch([0])
    t = time.perf_counter()
    for b in range(args.batches):
        old.batch(range(b * args.batch, (b + 1) * args.batch))
    old_rate = args.batches * args.batch / (time.perf_counter() - t)
    print(f"old (PairSynthesizer, cpu): {old_rate:.2f} pairs/s")
    print(f"ratio new/old: {new_rate / old_rate:.1f}x  (threads={args.threads}, crop={args.crop}, batch={args.batch})")


if __name__ == "__main__":
    main()
