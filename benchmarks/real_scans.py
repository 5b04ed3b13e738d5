"""Real scans from other scanners, never seen by anyone here: the suite's maps applied to images we did not make.

    python benchmarks/real_scans.py [--pairs 4] [--dims 2,3] [--methods none,unireg,ants] [--threads 1]

Every fixed image of the held-out suite (``held_out.py``) is the MNI template or a phantom drawn here.  These
fixed images are real acquisitions from other sites, shipped as test data inside two PyPI wheels (read from the
installed packages, nothing downloaded; ``pip install dipy`` is in UniReg's ``bench`` extra):

- ``t1_slice`` (2-D): a skull-stripped T1 slice, 256x256 (``dipy/data/files/t1_coronal_slice.npy``; no voxel
  size is stored: 1 mm assumed);
- ``epi_slice`` (2-D): axial slices of a whole-head gradient-echo EPI volume, 2 mm (``nibabel/tests/data/
  example4d.nii.gz``, first frame; another scanner, T2*-weighted, with its distortion and ghosting);
- ``b0`` (3-D): a diffusion b=0 volume of a whole head, 58x58x24 at 4x4x5 mm, stored LPS
  (``dipy/data/files/aniso_vox.nii.gz``: anisotropic voxels as a scanner writes them);
- ``epi`` (3-D): the EPI volume above, 128x96x24 at 2x2x2.2 mm (a 53 mm slab).

Each is the fixed image at its native grid; the moving image is the same scan moved by one of the suite's
known maps (``unireg.evaluation.suite``: deformation, intensity and grid families, bias field and noise,
drawn as in the suite but from case indices the suite never uses), so the residual against the true map is
known.  Labels are tissue classes of the fixed image (three intensity classes inside its head mask, by
k-means), carried to the moving grid by the true map: Dice is "tissue Dice".  Nothing here was used in
training or tuned to; the list is frozen (``SOURCES``, ``INDEX0``).

Each method is its whole command in its own process and is scored as in ``held_out.py`` (the same code).
Writes ``real_scans.md`` / ``.csv`` in ``--out-dir``: per deformation family and per source, the mean of
each method, pairs below no registration, UniReg's fallbacks, with the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import held_out  # noqa: E402

SOURCES = {2: ("t1_slice", "epi_slice"), 3: ("b0", "epi")}
INDEX0 = 500  # case indices of the suite's random draws: the frozen suite uses 0..~140
EPI_SLICES = (10, 13, 16)  # axial slices of the EPI volume through the ventricles and above
N_CLASSES = 3


def _package_file(package: str, *parts: str) -> Path:
    import importlib.resources

    try:
        p = Path(str(importlib.resources.files(package).joinpath(*parts)))
    except ModuleNotFoundError:
        raise SystemExit(f"real_scans.py: the package {package!r} is not installed "
                         "(pip install -e '.[bench]')") from None
    if not p.is_file():
        raise SystemExit(f"real_scans.py: {p} is missing from the installed {package!r}")
    return p


def _volume(source: str) -> tuple[np.ndarray, np.ndarray]:
    """The scan as float32 and its voxel-to-RAS matrix (4x4)."""
    import nibabel as nib

    if source == "t1_slice":
        img = np.load(_package_file("dipy.data", "files", "t1_coronal_slice.npy")).astype(np.float32)
        aff = np.eye(4)
        aff[:2, 3] = -(np.array(img.shape) - 1) / 2.0
        return img, aff
    if source in ("epi", "epi_slice"):
        im = nib.load(str(_package_file("nibabel", "tests", "data", "example4d.nii.gz")))
        return np.asarray(im.dataobj[..., 0], np.float32), np.asarray(im.affine, np.float64)
    if source == "b0":
        im = nib.load(str(_package_file("dipy.data", "files", "aniso_vox.nii.gz")))
        return np.asarray(im.dataobj, np.float32), np.asarray(im.affine, np.float64)
    raise ValueError(f"unknown source {source!r}")


def head_mask(img: np.ndarray) -> np.ndarray:
    """Otsu threshold of the lightly smoothed image, largest component, holes filled."""
    import torch
    from scipy import ndimage

    from unireg.align.foreground import otsu_threshold

    sm = ndimage.gaussian_filter(img, 1.0)
    t = float(otsu_threshold(torch.from_numpy(sm)))
    m = sm > t
    lab, n = ndimage.label(m)
    if n > 1:
        m = lab == (1 + int(np.argmax(ndimage.sum(m, lab, range(1, n + 1)))))
    if img.ndim == 3:  # fill holes slice by slice too (thick slabs: a 3-D fill leaves open ventricles)
        m = np.stack([ndimage.binary_fill_holes(m[:, :, k]) for k in range(m.shape[2])], -1)
    return ndimage.binary_fill_holes(m)


def tissue_classes(img: np.ndarray, mask: np.ndarray, k: int = N_CLASSES) -> np.ndarray:
    """Labels 1..k by 1-D k-means of the intensities inside ``mask`` (dark to bright); 0 outside."""
    v = img[mask].astype(np.float64)
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(50):
        lab = np.argmin(np.abs(v[:, None] - c[None]), axis=1)
        new = np.array([v[lab == j].mean() if np.any(lab == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    out = np.zeros(img.shape, np.uint8)
    out[mask] = 1 + np.argmin(np.abs(v[:, None] - np.sort(c)[None]), axis=1)
    return out


def anatomy(source: str, ndim: int, rng: np.random.Generator) -> dict:
    """A real scan as the suite's anatomy dict (``image`` in [0, 1], tissue ``labels``, ``affine``, ``centres``)."""
    from scipy import ndimage

    from unireg.evaluation.suite.grids import voxel_to_world

    img, aff = _volume(source)
    desc: dict = {"anatomy": source}
    if source == "epi_slice":
        z = int(rng.choice(EPI_SLICES))
        img = img[:, :, z]
        aff = aff.copy()
        aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * z
        desc["slice_z"] = z
    if img.ndim != ndim:
        raise ValueError(f"{source} is {img.ndim}-D, asked for {ndim}-D")
    img = np.clip(img, 0, None)
    img = img / max(float(img.max()), 1e-6)
    mask = head_mask(img)
    labels = tissue_classes(img, mask)
    deep = ndimage.binary_erosion(mask, iterations=3)
    idx = np.argwhere(deep)
    pick = idx[rng.choice(len(idx), size=min(8, len(idx)), replace=False)] if len(idx) else np.empty((0, ndim))
    sp = np.linalg.norm(aff[:ndim, :ndim], axis=0) if ndim == 3 else np.linalg.norm(aff[:3, :2], axis=0)
    desc.update(resolution_mm=[round(float(s), 2) for s in sp], shape=list(img.shape))
    return {"image": img.astype(np.float32), "labels": labels, "affine": aff,
            "centres": voxel_to_world(pick.astype(np.float64), aff) if len(pick) else np.empty((0, ndim)),
            "desc": desc}


def case_list(dims, pairs: int, deformations=None) -> list:
    """The frozen list: per dim and deformation family ``pairs`` cases; sources, intensity and grid families
    in turn (offset so that every deformation family meets every source and several contrasts).
    ``deformations``: keep only these deformation families (the others' cases are unchanged)."""
    from unireg.evaluation.suite.cases import DEFORMATIONS, GRIDS, INTENSITIES, CaseSpec

    out = []
    for nd in dims:
        srcs = SOURCES[nd]
        for di, d in enumerate(DEFORMATIONS):
            if deformations and d not in deformations:
                continue
            for i in range(pairs):
                out.append(CaseSpec(nd, INDEX0 + i, d, INTENSITIES[(3 * di + i) % len(INTENSITIES)],
                                    GRIDS[(di + i) % len(GRIDS)], srcs[(di + i) % len(srcs)]))
    return out


def by_source(rows: list[dict], methods: list[str]) -> str:
    head = ["source", "n"] + [f"Dice {m}" for m in methods] + [f"EPE {m} (mm)" for m in methods if m != "none"]
    if "unireg" in methods and "ants" in methods:
        head += ["UniReg - ANTs (pts)", "EPE UniReg / ANTs"]
    head += [f"{m} < none" for m in methods if m != "none"] + ["UniReg fallbacks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ok = [r for r in rows if r.get("status") == "ok"]
    by = {(r["case"], r["method"]): r for r in ok}
    for src in list(dict.fromkeys(r["anatomy"] for r in rows)) + ["all"]:
        cases = list(dict.fromkeys(r["case"] for r in rows if src in ("all", r["anatomy"])))

        def mean(m, key, cases=cases):
            v = [float(by[(c, m)][key]) for c in cases if (c, m) in by]
            return float(np.mean(v)) if v else float("nan")

        cells = [src, str(len(cases))] + [f"{mean(m, 'dice'):.3f}" for m in methods]
        cells += [f"{mean(m, 'epe_mm'):.2f}" for m in methods if m != "none"]
        if "unireg" in methods and "ants" in methods:
            cells += [f"{100 * (mean('unireg', 'dice') - mean('ants', 'dice')):+.1f}",
                      f"{mean('unireg', 'epe_mm') / mean('ants', 'epe_mm'):.2f}"]
        for m in methods:
            if m != "none":
                below = sum(1 for c in cases if (c, m) in by and (c, "none") in by
                            and float(by[(c, m)]["dice"]) < float(by[(c, "none")]["dice"]) - 1e-9)
                cells.append(f"{below}/{len(cases)}")
        fb = sum(1 for c in cases if (c, "unireg") in by and int(by[(c, "unireg")].get("fallback") or 0))
        cells.append(f"{fb}/{len(cases)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4, help="pairs per deformation family and dim (default 4: 40 pairs)")
    p.add_argument("--dims", default="2,3", help="comma list of 2 and/or 3")
    p.add_argument("--deformations", default="", help="comma list: only these deformation families")
    p.add_argument("--methods", default="none,unireg,ants", help="comma list from " + ",".join(held_out.METHODS))
    p.add_argument("--unireg-args", default="", help='options passed to `unireg register`')
    p.add_argument("--threads", type=int, default=1, help="threads for every method (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and pair")
    p.add_argument("--ants-metric", choices=("auto", "mattes", "cc"), default="auto")
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument("--name", default="real_scans", help="file name stem of the results")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--summarise", type=Path, default=None, metavar="CSV",
                   help="print the tables of a finished run's CSV again (nothing is run)")
    args = p.parse_args(argv)
    if args.summarise is not None:
        rows = held_out.read_rows(args.summarise)
        methods = [m for m in held_out.METHODS if any(r["method"] == m for r in rows)]
        print("## By source\n\n" + by_source(rows, methods) + "\n\n## By family\n\n" + held_out.summarise(rows, methods))
        return 0
    args.methods = [m for m in held_out.METHODS if m in {x.strip() for x in args.methods.split(",")} | {"none"}]
    dims = tuple(int(d) for d in args.dims.split(",") if d.strip())

    import torch

    torch.set_num_threads(args.threads)
    specs = case_list(dims, args.pairs, [d.strip() for d in args.deformations.split(",") if d.strip()])
    work = args.work or Path(tempfile.mkdtemp(prefix="unireg_real_scans_"))
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    csv_path = args.out_dir / f"{args.name}.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    rows: list[dict] = []
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=held_out.FIELDS)
        writer.writeheader()
        for i, spec in enumerate(specs):
            print(f"[{i + 1}/{len(specs)}] {time.perf_counter() - t0:.0f} s", flush=True)
            anat = anatomy(spec.anatomy, spec.ndim, spec.rng(0))
            rows += held_out.evaluate_pair(spec, args, work, writer, fh, anatomy=anat)
    os.replace(tmp, csv_path)
    load1 = os.getloadavg()
    secs = {m: statistics.median([float(r["seconds"]) for r in rows if r["method"] == m and r.get("seconds")])
            for m in args.methods if m != "none" and any(r["method"] == m and r.get("seconds") for r in rows)}
    given = argv if argv is not None else sys.argv[1:]
    cmd = "python benchmarks/real_scans.py " + " ".join(shlex.quote(a) for a in given)
    text = (f"# Real scans from other scanners (test data of dipy and nibabel), known maps\n\n`{cmd.strip()}` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.perf_counter() - t0) / 60:.1f} min, "
            f"{args.threads} thread(s) per method, load average {load0[0]:.2f} -> {load1[0]:.2f}; UniReg args: "
            f"`{args.unireg_args or '(defaults)'}`)\n\nTissue Dice (three intensity classes of the fixed scan, "
            f"carried by the true map); EPE inside the head against the known map; median whole-process seconds "
            + ", ".join(f"{m} {s:.1f}" for m, s in secs.items()) + ".\n\n## By source\n\n"
            + by_source(rows, args.methods) + "\n\n## By family (as held_out.py)\n\n"
            + held_out.summarise(rows, args.methods) + "\n")
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
