"""Pairs/s of the old per-pair synthesizer vs the batched torch one (same threads, same crop).

    python experiments/synth_speed.py --ndim 3 --crop 48 48 48 --batch 8 --batches 10 --threads 1 --label-stride 2

Batches of the two alternate (a busy neighbour slows both alike); it prints the median pairs/s of
each and their ratio.  ``--device cuda --skip-old`` times the torch one on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    old = (
        None
        if args.skip_old
        else PairSynthesizer(args.ndim, spacing, args.crop, 8.0, ["t1"], 0.2, 0.02, 4.0, 0.04, 3.0)
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def rate(fn, b: int) -> float:
        seeds = range(b * args.batch, (b + 1) * args.batch)
        sync()
        t = time.perf_counter()
        fn(seeds)
        sync()
        return args.batch / (time.perf_counter() - t)

    new.batch(range(args.batch))  # warm-up
    if old is not None:
        old.batch([0])
    # one batch of each in turn, so that a noisy neighbour slows both alike: medians and their ratio
    new_rates, old_rates = [], []
    for b in range(args.batches):
        new_rates.append(rate(new.batch, b))
        if old is not None:
            old_rates.append(rate(old.batch, b))
    new_rate = statistics.median(new_rates)
    print(
        f"new (TorchPairSynthesizer, {args.device}, label_stride {args.label_stride}): {new_rate:.2f} pairs/s "
        f"(median of {args.batches} batches; {min(new_rates):.1f}-{max(new_rates):.1f})"
    )
    if old is None:
        return
    old_rate = statistics.median(old_rates)
    ratios = sorted(n / o for n, o in zip(new_rates, old_rates, strict=True))
    print(f"old (PairSynthesizer, cpu): {old_rate:.2f} pairs/s ({min(old_rates):.1f}-{max(old_rates):.1f})")
    print(
        f"ratio new/old: {new_rate / old_rate:.1f}x of the medians; batch by batch {ratios[0]:.1f}-{ratios[-1]:.1f}x  "
        f"(threads={args.threads}, crop={args.crop}, batch={args.batch}, load {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
