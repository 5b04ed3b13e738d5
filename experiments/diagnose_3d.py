"""Why is the 3-D loss flat?  Measurements on the training pairs of experiments/train_3d.yaml.

    OMP_NUM_THREADS=1 python experiments/diagnose_3d.py --pairs 4 [--model src/unireg/weights/unireg_3d.pt]

For each held-out pair (seeds from 10,000,000): the relative displacement between the fixed and
moving crops (|q_f - q_m| in voxels and the part of it an affine map does not explain), and the
loss terms / GM-WM Dice for (a) the zero velocity (no learning), (b) the model's velocity,
(c) the velocity optimised for this pair alone on the training loss (what a perfect network
could reach: is the target identifiable from the loss at all?).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def dice(fl, wl):
    a, c = fl.argmax(1), wl.argmax(1)
    vals = []
    for k in (1, 2):
        inter = ((a == k) & (c == k)).sum().item()
        vals.append(2 * inter / max(((a == k).sum() + (c == k).sum()).item(), 1))
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="src/unireg/weights/unireg_3d.pt")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--opt-steps", type=int, default=150)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--no-affine", action="store_true", help="pairs without the affine jitter")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from unireg.align.refine import REG_SCALE
    from unireg.losses import dice_loss, feature_mse
    from unireg.models.registrar import load_registrar
    from unireg.spatial.grid import resize_field, warp
    from unireg.spatial.integrate import integrate_velocity
    from unireg.training.dataset import PairSynthesizer
    from unireg.training.trainer import _per_sample_grad_l2

    model = load_registrar(args.model)
    aff = (0.0, 0.0, 0.0) if args.no_affine else (4.0, 0.04, 3.0)
    synth = PairSynthesizer(3, 2.0, [48, 48, 48], 8.0, ["t1"], 0.2, 0.02, *aff)
    recorded = []
    orig = synth._coords

    def rec(*a, **k):
        q = orig(*a, **k)
        recorded.append(q)
        return q

    synth._coords = rec

    def terms(b, ff, fm, v, lam):
        disp_c = integrate_velocity(v, model.int_steps)
        disp = resize_field(disp_c, b["fixed"].shape[2:])
        sim = feature_mse(ff, warp(fm, disp))
        d = 0.5 * dice_loss(b["fixed_labels"][:, 1:], warp(b["moving_labels"], disp)[:, 1:])
        reg = (REG_SCALE * lam * _per_sample_grad_l2(disp_c)).mean()
        return sim, d, reg, disp

    rows = []
    for i in range(args.pairs):
        recorded.clear()
        b = synth.batch([10_000_000 + i])
        qf, qm = recorded[0].double(), recorded[1].double()
        rel = (qf - qm).reshape(3, -1).T  # source-voxel offset between the crops, ~ displacement needed
        mag = rel.norm(dim=1)
        X = torch.cat([qf.reshape(3, -1).T, torch.ones(rel.shape[0], 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(X, rel).solution
        resid = (rel - X @ coef).norm(dim=1)
        ff, fm = model.extract(b["fixed"]), model.extract(b["moving"])
        lam = torch.tensor([args.lam])
        out = {"|u| mean": mag.mean().item(), "|u| max": mag.max().item(), "non-affine mean": resid.mean().item(),
               "non-affine max": resid.max().item()}
        with torch.no_grad():
            v0 = torch.zeros(1, 3, 24, 24, 24)
            s, d, r, disp = terms(b, ff, fm, v0, lam)
            out.update(sim0=s.item(), dice0=d.item(), D0=dice(b["fixed_labels"], warp(b["moving_labels"], disp)))
            vn = model(ff, fm, lam)
            s, d, r, disp = terms(b, ff, fm, vn, lam)
            out.update(simN=s.item(), diceN=d.item(), regN=r.item(), DN=dice(b["fixed_labels"], warp(b["moving_labels"], disp)))
        v = torch.zeros(1, 3, 24, 24, 24, requires_grad=True)
        opt = torch.optim.Adam([v], lr=0.1)
        for _ in range(args.opt_steps):
            s, d, r, disp = terms(b, ff, fm, v, lam)
            opt.zero_grad()
            (s + d + r).backward()
            opt.step()
        with torch.no_grad():
            s, d, r, disp = terms(b, ff, fm, v, lam)
            out.update(simO=s.item(), diceO=d.item(), regO=r.item(), DO=dice(b["fixed_labels"], warp(b["moving_labels"], disp)))
        rows.append(out)
        print(i, " ".join(f"{k}={v:.4f}" for k, v in out.items()), flush=True)
    keys = rows[0].keys()
    print("mean", " ".join(f"{k}={np.mean([r[k] for r in rows]):.4f}" for k in keys))


if __name__ == "__main__":
    main()
