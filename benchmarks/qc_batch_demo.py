"""A batch of 8 synthetic 2-D pairs, 3 of them broken on purpose, and its sortable index.html.

Each pair is an axial MNI T1 slice (1 mm) against a deformed, contrast-changed copy.  Three pairs are
broken before registration: the moving image is replaced by a coronal slice (unrelated anatomy), by
the front-back flipped copy, or by a slice 40 mm away.  All eight are registered with
``unireg.api.register`` and saved with ``result.save(DIR/<id>)``; ``DIR/index.html`` comes from
``unireg.reports.html.build_index`` and lists the pairs worst first by failure score.  The script
prints the order and whether the broken pairs come first; since the unbroken pairs' true warps are
known, it also reports any registration that failed on its own (the ``ct``-contrast pair does, with the
untrained 2-D model), which then rightly ranks among the broken ones.

    python benchmarks/qc_batch_demo.py --out /tmp/qc_batch
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

from unireg import api
from unireg.data.mni import load_mni
from unireg.data.synth import coarse_shape, deform_pair_field, make_moving, random_velocity
from unireg.io.image import write_image
from unireg.preprocess import normalize_intensity
from unireg.reports.html import build_index

AFF = np.eye(4)
CONTRASTS = ["t2", "pd", "flair", "ct", "t1"]


def make_pairs(t1: np.ndarray):
    pairs = []
    zs = [60, 72, 84, 96, 108, 120, 66, 90]
    for i, z in enumerate(zs):
        fixed = t1[:, :, z].copy()
        v = random_velocity(coarse_shape(fixed.shape, 4), 6.0 / 4, seed=200 + i)
        moving = make_moving(torch.from_numpy(fixed), v, contrast=CONTRASTS[i % 5], seed=200 + i).numpy()
        true_disp = deform_pair_field(v, fixed.shape)[0][0].numpy()  # fixed->moving, voxels == mm
        pairs.append({"id": f"pair{i:02d}", "fixed": fixed, "moving": moving, "broken": None, "true": true_disp})
    pairs[1]["moving"], pairs[1]["broken"] = t1[:, 110, :].copy(), "unrelated (coronal slice)"
    pairs[4]["moving"], pairs[4]["broken"] = pairs[4]["moving"][:, ::-1].copy(), "flipped front-back"
    pairs[6]["moving"] = make_moving(torch.from_numpy(t1[:, :, 66 + 40].copy()),
                                     random_velocity(coarse_shape(t1.shape[:2], 4), 1.5, seed=999), "t2", seed=999).numpy()
    pairs[6]["broken"] = "slice 40 mm away"
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("qc_batch"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t1 = load_mni(None)["t1"].data[0]
    rows = []
    pairs = make_pairs(t1)
    for p in pairs:
        t0 = time.perf_counter()
        # from files, as a batch would be: report.html reads the inputs back by path
        inputs = a.out / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        fpath, mpath = inputs / f"{p['id']}_fixed.nii.gz", inputs / f"{p['id']}_moving.nii.gz"
        write_image(fpath, p["fixed"][None], AFF, dtype=np.float32)
        write_image(mpath, p["moving"][None], AFF, dtype=np.float32)
        res = api.register(fpath, mpath)
        res.save(a.out / p["id"])
        rep = res.report
        truth = ""
        if p["broken"] is None:  # ground truth, for this printout only: did the registration fail anyway?
            fg = normalize_intensity(p["fixed"]) > 0.05
            epe = float(np.linalg.norm(res.warp_mm - p["true"], axis=0)[fg].mean())
            epe0 = float(np.linalg.norm(p["true"], axis=0)[fg].mean())
            truth = f"  true error {epe:.1f} mm (before {epe0:.1f})"
            if epe >= epe0:
                p["failed"] = f"registration failed: true error {epe:.1f} mm, before {epe0:.1f}"
        rows.append({"id": p["id"], "dir": p["id"], "dice": None, "folded_percent": rep["folded_percent"],
                     "runtime_s": rep["runtime_s"], "qc_score": rep["qc_score"], "qc_flag": rep["qc_flag"],
                     "status": "ok", "error": None})
        print(f"{p['id']}  broken={str(p['broken']):28s} qc_score={rep['qc_score']:.3f}  flag={rep['qc_flag']}"
              f"  ({time.perf_counter() - t0:.1f} s){truth}", flush=True)
    index = build_index(a.out, rows)
    order = re.findall(r'<tr class="pair [^"]*" data-id="([^"]+)"', index.read_text())
    broken = {p["id"] for p in pairs if p["broken"]}
    failed = {p["id"]: p["failed"] for p in pairs if p.get("failed")}
    bad = broken | set(failed)
    flagged = {r["id"] for r in rows if r["qc_flag"]}
    print(f"\nindex: {index}")
    print("order (worst first):", " ".join(order))
    print(f"broken on purpose: {sorted(broken)}; failed although not broken (ground truth): {failed or 'none'}")
    print(f"flagged: {sorted(flagged)}")
    print(f"broken pairs sorted first: {set(order[:len(broken)]) == broken}; "
          f"broken + truly failed pairs sorted first: {set(order[:len(bad)]) == bad}")


if __name__ == "__main__":
    main()
