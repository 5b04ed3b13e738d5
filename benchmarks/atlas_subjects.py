"""The MNI atlas against real subjects, both ways, no synthetic map: what a user registering scans to a template meets.

    python benchmarks/atlas_subjects.py [--methods unireg,ants] [--threads 2] [--mni-mm 1] [--out-dir DIR]

``real_scans.py`` moves real scans by known maps; here the two images are different people, as in atlas work.
The subjects are real acquisitions from other sites shipped as test data in nibabel's and dipy's wheels (nothing
downloaded; ``pip install -e '.[bench]'``):

- ``t1crop``: a T1 of another subject, 33x41x25 voxels at 2 mm covering 66x82x50 mm around the ventricles
  (``nibabel/tests/data/anatomical.nii``): a partial field of view;
- ``b0``: a diffusion b=0 volume of a whole head, 58x58x24 at 4x4x5 mm, stored LPS
  (``dipy/data/files/aniso_vox.nii.gz``);
- ``epi``: a gradient-echo EPI frame, a 53 mm slab at 2x2x2.2 mm (``nibabel/tests/data/example4d.nii.gz``).

The atlas is the MNI ICBM152 2009 T1 (nilearn's wheel, ``unireg.data.mni``) with its grey/white-matter labels.
There is no true map.  A subject's grey and white matter are its own intensity classes (``real_scans.tissue_classes``:
three k-means classes inside its head; T1: the middle and brightest, T2-weighted b=0 and EPI: the middle and
darkest), drawn once, without any registration: the Dice of carried labels compares methods on the same footing,
but its level is low (crude classes on coarse scans), so read differences, not levels.

- ``atlas->subject``: fixed = the subject, moving = the atlas with its labels; mean GM/WM Dice of the carried
  atlas labels against the subject's classes inside the subject's head;
- ``subject->atlas``: fixed = the atlas, moving = the subject with its classes; mean GM/WM Dice where the carried
  classes land.

Each method is its whole command in its own process (UniReg: ``unireg register`` with its defaults; ANTs:
``held_out_peer.py ants``, antspyx SyN with Mattes MI, its default iterations).  Also printed: UniReg's failure flag
(exit status 3 without ``--allow-flagged``) and which stages it kept, seconds per command.  Writes
``atlas_subjects.md`` and ``.jsonl`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_scans  # noqa: E402
import speed  # noqa: E402

SUBJECTS = {  # name: (package, path parts, contrast)
    "t1crop": ("nibabel", ("tests", "data", "anatomical.nii"), "t1"),
    "b0": ("dipy.data", ("files", "aniso_vox.nii.gz"), "t2"),
    "epi": ("nibabel", ("tests", "data", "example4d.nii.gz"), "t2"),
}
DIRECTIONS = ("atlas->subject", "subject->atlas")


def subject_classes(img: np.ndarray, name: str) -> np.ndarray:
    """1 = grey matter, 2 = white matter, 3 = the third class (CSF), 0 outside the head."""
    import torch

    from unireg.align.foreground import otsu_threshold

    if name == "t1crop":  # a crop inside the brain: no background to find, only the darkest CSF to keep
        mask = img > 0.3 * float(otsu_threshold(torch.from_numpy(img[img > 0])))
    else:
        mask = real_scans.head_mask(img)
    cls = real_scans.tissue_classes(img, mask, 3)  # 1..3 dark -> bright
    gm, wm = (2, 3) if SUBJECTS[name][2] == "t1" else (2, 1)
    out = np.where(cls > 0, 3, 0).astype(np.int16)
    out[cls == gm] = 1
    out[cls == wm] = 2
    return out


def write_inputs(work: Path, mni_mm: float, names) -> dict[str, Path]:
    import nibabel as nib

    from unireg.data.mni import load_mni

    mni = load_mni(mni_mm)
    paths = {"atlas": work / "atlas.nii.gz", "atlas_labels": work / "atlas_labels.nii.gz"}
    nib.save(nib.Nifti1Image(mni["t1"].data[0].astype(np.float32), mni["t1"].affine), paths["atlas"])
    nib.save(nib.Nifti1Image(mni["labels"].data[0].astype(np.int16), mni["t1"].affine), paths["atlas_labels"])
    for name in names:
        package, parts, _ = SUBJECTS[name]
        im = nib.load(str(real_scans._package_file(package, *parts)))
        img = np.asarray(im.dataobj, np.float32)
        img = img[..., 0] if img.ndim == 4 else img
        paths[name] = work / f"{name}.nii.gz"
        paths[f"{name}_classes"] = work / f"{name}_classes.nii.gz"
        nib.save(nib.Nifti1Image(img, im.affine), paths[name])
        nib.save(nib.Nifti1Image(subject_classes(img, name), im.affine), paths[f"{name}_classes"])
    return paths


def gm_wm_dice(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean Dice of grey (1) and white matter (2) inside ``region`` (the package's own Dice)."""
    from unireg.evaluation.metrics import dice

    return float(dice(np.where(region, a, 0), np.where(region, b, 0), labels=(1, 2))["mean"])


def run_method(method: str, fixed: Path, moving: Path, labels: Path, out: Path, threads: int) -> dict:
    if method == "unireg":
        cmd = speed.unireg_command() + ["--threads", str(threads), "register", str(fixed), str(moving),
                                       "-o", str(out), "--labels", str(labels), "--allow-flagged"]
    elif method == "ants":
        cmd = [sys.executable, str(HERE / "held_out_peer.py"), "ants", str(fixed), str(moving), str(out),
               "--metric", "mattes", "--threads", str(threads), "--labels", str(labels)]
    else:
        raise ValueError(f"unknown method {method!r}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    row: dict = {"seconds": round(secs, 1)}
    if method == "unireg":
        rep = json.loads((out / "report.json").read_text())
        row.update(qc_flag=bool(rep["qc_flag"]), qc_score=rep["qc_score"],
                   kept=[k for k, v in rep["stages"].items() if v.get("kept")])
    return row


def score(direction: str, out: Path, paths: dict, name: str) -> float:
    import nibabel as nib

    warped = np.asarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj)
    if direction == "atlas->subject":
        sub = np.asarray(nib.load(str(paths[f"{name}_classes"])).dataobj)
        return gm_wm_dice(warped, sub, sub > 0)
    atlas = np.asarray(nib.load(str(paths["atlas_labels"])).dataobj)
    return gm_wm_dice(warped, atlas, warped > 0)


def run(methods, names, threads: int, mni_mm: float, work: Path, directions=DIRECTIONS) -> list[dict]:
    paths = write_inputs(work, mni_mm, names)
    rows = []
    for name in names:
        for direction in directions:
            if direction == "atlas->subject":
                fixed, moving, labels = paths[name], paths["atlas"], paths["atlas_labels"]
            else:
                fixed, moving, labels = paths["atlas"], paths[name], paths[f"{name}_classes"]
            for method in methods:
                out = work / f"{name}_{direction.replace('->', '_to_')}_{method}"
                row = {"subject": name, "direction": direction, "method": method}
                row.update(run_method(method, fixed, moving, labels, out, threads))
                row["dice"] = round(score(direction, out, paths, name), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], methods) -> str:
    head = ["subject", "direction"] + [f"Dice {m}" for m in methods]
    if "unireg" in methods and "ants" in methods:
        head.append("UniReg - ANTs (pts)")
    head += [f"s {m}" for m in methods] + (["UniReg flagged", "UniReg stages kept"] if "unireg" in methods else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["subject"], r["direction"]) for r in rows))
    for key in keys:
        by = {r["method"]: r for r in rows if (r["subject"], r["direction"]) == key}
        cells = list(key) + [f"{by[m]['dice']:.3f}" if m in by else "" for m in methods]
        if "unireg" in methods and "ants" in methods:
            both = "unireg" in by and "ants" in by
            cells.append(f"{100 * (by['unireg']['dice'] - by['ants']['dice']):+.1f}" if both else "")
        cells += [f"{by[m]['seconds']:.1f}" if m in by else "" for m in methods]
        if "unireg" in methods and "unireg" in by:
            u = by["unireg"]
            cells += [f"{'yes' if u['qc_flag'] else 'no'} ({u['qc_score']:.2f})", ", ".join(u["kept"])]
        lines.append("| " + " | ".join(cells) + " |")
    for m in methods:
        d = [r["dice"] for r in rows if r["method"] == m]
        lines.append(f"\nmean Dice {m}: {np.mean(d):.3f} over {len(d)} registrations")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="MNI atlas <-> real subjects (no synthetic map), UniReg vs ANTs SyN")
    ap.add_argument("--methods", default="unireg,ants")
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mni-mm", type=float, default=1.0, help="the atlas's voxel size (1: the template as shipped)")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: temporary)")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    names = [n for n in a.subjects.split(",") if n]
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown:
        ap.error(f"unknown subjects {unknown}; choose from {list(SUBJECTS)}")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(methods, names, a.threads, a.mni_mm, work)
    text = table(rows, methods) + f"\n\nload average {load0:.2f} -> {os.getloadavg()[0]:.2f}, {a.threads} thread(s)"
    print(text)
    if a.out_dir:
        a.out_dir.mkdir(parents=True, exist_ok=True)
        (a.out_dir / "atlas_subjects.md").write_text(text + "\n")
        (a.out_dir / "atlas_subjects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
