"""Network-only validation on held-out synthetic deformations, per moving contrast.

    python experiments/validate_network.py --model src/unireg/weights/unireg_2d.pt --pairs 32

Pairs come from the training synthesizer (MNI T1, random smooth deformation + affine jitter, bias,
noise) with seeds from 10,000,000 on, which training never draws.  The fixed image is T1 (the
training contrast); the moving image is remapped to each contrast.  Prints a markdown table of
GM/WM mean Dice before/after and % folded voxels (det J <= 0).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--contrasts", nargs="+", default=["t1", "t2", "pd", "flair", "ct"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synth", choices=["legacy", "torch"], default="legacy",
                    help="held-out pairs of the old per-pair synthesizer (independent affine jitter of both "
                         "images) or of training/synth_torch.py (small relative affine, multi-scale SVF)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from unireg.models.registrar import load_registrar
    from unireg.training.dataset import PairSynthesizer
    from unireg.training.trainer import validate

    model = load_registrar(args.model)
    cfg = model.meta.get("train_config", {})
    if args.synth == "legacy":
        synth = PairSynthesizer(model.ndim, model.working["spacing"], cfg.get("crop", [64] * model.ndim),
                                cfg.get("max_disp_mm", 8.0), ["t1"], cfg.get("bias", 0.2), cfg.get("noise", 0.02),
                                cfg.get("rot_deg", 4.0), cfg.get("scale", 0.04), cfg.get("trans_mm", 3.0))
    else:
        from unireg.training.synth_torch import TorchPairSynthesizer

        synth = TorchPairSynthesizer(model.ndim, model.working["spacing"], cfg.get("crop", [64] * model.ndim),
                                     max_disp_mm=cfg.get("max_disp_mm", 8.0), label_stride=1)
    print(f"model {args.model} ({model.extractor_name}, {model.ndim}-D, {model.meta.get('steps')} steps); "
          f"{args.pairs} held-out {args.synth} pairs per row; fixed T1")
    print()
    print("| moving contrast | Dice before | Dice after | % folded |")
    print("| --- | --- | --- | --- |")
    for c in args.contrasts:
        r = validate(model, synth, args.pairs, moving_contrast=c)
        print(f"| {c} | {r['dice_before']:.3f} | {r['dice_after']:.3f} | {r['folded_percent']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
