"""Network-only validation at 1 mm on held-out-style pairs, per moving contrast, vs affine-only.

    OMP_NUM_THREADS=1 python experiments/validate_1mm.py --model src/unireg/weights/unireg_3d.pt --pairs 2

Fixed: the 1 mm MNI T1 with its GM/WM labels.  Moving: the same template under deformation
families the trainer never draws (random cubic B-spline grids, 24 mm control spacing, sigma 3.5 mm; radial
local expansion/contraction blobs), a random rigid header offset (up to 4 deg, 4 mm), then remapped
to T1/T2/PD/FLAIR-like contrast with bias and noise.  Both methods run the full pipeline
(``register_images``: affine on MIND, then the network) with ``refine=0`` and the do-no-harm gate off
(the network's own output is what is measured); "affine only" uses a network whose output is exactly
zero.  ``--ants``: antspyx SyN (Mattes MI, default iterations) on the same pairs, each in its own
process (``benchmarks/held_out_peer.py``), labels warped nearest-neighbour.  Prints a markdown table
of GM/WM mean Dice.
(This script is evaluation code: the deformation families live here, never in training/.)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def bspline_field(shape, rng, spacing_vox=24, sigma=3.5):
    from scipy import ndimage

    ctrl_shape = [int(math.ceil(n / spacing_vox)) + 3 for n in shape]
    out = []
    for _ in range(3):
        c = rng.normal(0, sigma, ctrl_shape).astype(np.float32)
        z = ndimage.zoom(c, [(n + 2 * spacing_vox) / m for n, m in zip(shape, ctrl_shape)], order=3)
        out.append(z[spacing_vox: spacing_vox + shape[0], spacing_vox: spacing_vox + shape[1], spacing_vox: spacing_vox + shape[2]])
    return np.stack(out)


def radial_field(shape, rng, labels, blobs=4, sigma=15.0):
    idx = np.argwhere(labels > 0)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    u = np.zeros_like(grid)
    for _ in range(blobs):
        c = idx[rng.integers(len(idx))].astype(np.float32).reshape(3, 1, 1, 1)
        a = rng.uniform(0.3, 0.45) * rng.choice([-1, 1])
        d = grid - c
        u += a * d * np.exp(-(d * d).sum(0) / (2 * sigma**2))
    return u


def rigid(rng, deg=4.0, mm=4.0):
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rng.uniform(-1, 1, 3) * math.radians(deg) / math.sqrt(3)).as_matrix()
    m[:3, 3] = rng.uniform(-mm, mm, 3)
    return m


def make_pair(family: str, contrast: str, seed: int):
    from unireg.data.mni import load_mni, tissue_labels
    from unireg.data.synth import add_noise, bias_field, remap_contrast
    from unireg.io.image import Image
    from unireg.spatial.grid import warp

    mni = load_mni(None)
    t1 = torch.from_numpy(mni["t1"].data[0]).float()
    lab = tissue_labels(mni["gm"], mni["wm"])
    rng = np.random.default_rng(seed)
    shape = t1.shape
    u = bspline_field(shape, rng) if family == "bspline" else radial_field(shape, rng, lab)
    u = torch.from_numpy(u)[None].float()
    moved = warp(t1[None, None], u)[0, 0]
    moved_lab = warp(torch.from_numpy(lab)[None, None].float(), u, mode="nearest")[0, 0].numpy().astype(np.uint8)
    img = remap_contrast(moved, contrast) * bias_field(shape, 0.2, seed)
    img = add_noise(img, 0.02, seed).clamp_min(0)
    aff = rigid(rng) @ mni["t1"].affine  # a rigid offset in the header: the affine stage must undo it
    fixed = Image(t1.numpy()[None], mni["t1"].affine.copy(), None)
    return fixed, Image(lab[None], mni["t1"].affine.copy(), None), Image(img.numpy()[None], aff, None), \
        Image(moved_lab[None], aff.copy(), None)


def zero_network(ndim: int = 3):
    from unireg.models.registrar import Registrar

    reg = Registrar(ndim, unet={"enc": [4, 4, 4, 4], "dec": [4, 4, 4]}, trained=True, meta={"name": "affine-only"})
    torch.nn.init.zeros_(reg.unet.head.weight)
    return reg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, nargs="+", help="one or more checkpoints (compared on the same pairs)")
    ap.add_argument("--pairs", type=int, default=2, help="pairs per family and contrast")
    ap.add_argument("--families", nargs="+", default=["bspline", "radial"])
    ap.add_argument("--contrasts", nargs="+", default=["t1", "t2", "pd", "flair"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ants", action="store_true", help="also run antspyx SyN (MI) on every pair (minutes each)")
    ap.add_argument("--passes", type=int, default=None,
                    help="passes of the network (recursive cascade; default: the pipeline's for --refine 0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.passes is not None:
        from unireg.stages import deformable

        deformable.NETWORK_ONLY_PASSES[3] = args.passes
    from unireg.models.registrar import load_registrar
    from unireg.pipeline import register_images

    methods = {"affine only": zero_network()}
    for m in args.model:
        methods[m] = load_registrar(m)
    rows = {}
    t0 = time.perf_counter()
    for c in args.contrasts:
        res = {k: [] for k in ["before", *methods, *(["ANTs SyN"] if args.ants else [])]}
        for fam in args.families:
            for i in range(args.pairs):
                fixed, flab, moving, mlab = make_pair(fam, c, 1000 + i)
                for name, reg in methods.items():
                    r = register_images(fixed, moving, reg, affine=True, refine=0, moving_labels=mlab,
                                        fixed_labels=flab, qc_score=False, do_no_harm=False).report
                    res[name].append(np.mean([r["dice"]["1"], r["dice"]["2"]]))
                    if name == "affine only":
                        res["before"].append(np.mean([r["dice_before"]["1"], r["dice_before"]["2"]]))
                if args.ants:
                    res["ANTs SyN"].append(ants_dice(fixed, flab, moving, mlab, args.threads))
        rows[c] = {k: float(np.mean(v)) for k, v in res.items()}
        print(c, rows[c], f"{time.perf_counter() - t0:.0f}s", flush=True)
    print(f"\n{args.pairs} pair(s) x {len(args.families)} families ({', '.join(args.families)}) "
          "per contrast; fixed MNI T1 1 mm; GM/WM mean Dice\n")
    ants = ["ANTs SyN"] if args.ants else []
    print("| moving contrast | no registration | affine only | "
          + " | ".join(f"{m} (refine 0)" for m in args.model) + "".join(f" | {a}" for a in ants) + " |")
    print("| --- | --- | --- |" + " --- |" * (len(args.model) + len(ants)))
    for c, r in rows.items():
        cells = [f"{r[m]:.3f} ({r[m] - r['affine only']:+.3f}"
                 + (f"; {100 * (r[m] - r['ANTs SyN']):+.1f} pts vs ANTs" if ants else "") + ")" for m in args.model]
        print(f"| {c} | {r['before']:.3f} | {r['affine only']:.3f} | " + " | ".join(cells)
              + "".join(f" | {r[a]:.3f} ({r[a] - r['affine only']:+.3f})" for a in ants) + " |")


def ants_dice(fixed, flab, moving, mlab, threads: int) -> float:
    """GM/WM mean Dice of antspyx SyN (MI) on the pair, run as its own process on NIfTI copies."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import nibabel as nib

    from unireg.evaluation.metrics import dice
    from unireg.io.image import write_image

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_image(d / "f.nii.gz", fixed.data[0], fixed.affine, dtype=np.float32)
        write_image(d / "m.nii.gz", moving.data[0], moving.affine, dtype=np.float32)
        write_image(d / "ml.nii.gz", mlab.data[0], mlab.affine, dtype=np.uint8)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
        subprocess.run([sys.executable, str(root / "benchmarks" / "held_out_peer.py"), "ants", str(d / "f.nii.gz"),
                        str(d / "m.nii.gz"), str(d / "out"), "--metric", "mattes", "--threads", str(threads),
                        "--labels", str(d / "ml.nii.gz")], check=True, env=env)
        warped = np.asarray(nib.load(str(d / "out" / "warped_labels.nii.gz")).dataobj).squeeze()
    dd = dice(flab.data[0], warped)
    return float(np.mean([dd[1], dd[2]]))


if __name__ == "__main__":
    main()
