"""Calibrate and measure UniReg's ground-truth-free failure flag (``unireg.evaluation.qc_score``).

Pairs, per dimensionality (``--ndim 2``, ``3`` or ``both``):

* 2-D: axial slices of the MNI T1 (1 mm);
* 3-D: random 64^3 blocks of the MNI T1 at 2 mm (128 mm cubes, most of the brain), so that 100+
  3-D pairs stay affordable on a CPU.

The moving image is a deformed (3-10 mm), contrast-changed (t1/t2/pd/flair/ct), bias- and
noise-corrupted copy (``unireg.data.synth.make_moving``).

* real registration of the pair by ``unireg.api.register`` (the default 2-D model; the score is read
  from the report's figures, i.e. computed inside the pipeline), labelled by the known true warp:
  ``good`` if it removed at least a quarter of the initial misalignment (mean endpoint error in the
  brain), ``failed_registration`` (broken) if it left the pair as misaligned as before or worse, else
  ``ambiguous`` (listed, neither fitted nor counted).
* broken, each from the same pair, on the working grid, with the real registration's displacement:
  ``translation`` (5-15 mm added, random direction), ``flip`` (moving flipped front-back; the MNI
  template is left-right symmetric, so a left-right flip is no failure), ``random_deformation`` (a
  smooth random field of 10-20 mm added), ``swapped`` (moving replaced by another slice/block, 25-45 mm away,
  with its own deformation and contrast), ``folding_noise`` (noise of 2-3 voxels added to the field).
* broken, registered for real: ``registered_flipped`` (the pipeline run on the front-back flipped
  moving, even pairs) or ``registered_unrelated`` (the pipeline run with a coronal slice, in 3-D the
  block turned 90 degrees about x, as moving, odd pairs): the optimiser does its best on an impossible pair.

Calibration pairs use seeds 0..N-1, held-out pairs seeds 1000..1000+M-1 (disjoint slices, deformations,
contrasts).  One logistic model over the score's components (its figures are dimension-free ratios
and fractions) is fitted on the calibration pairs of every dimensionality asked for (classes weighted
equally), the threshold is the one maximising TPR - FPR on the calibration scores, and both are then
frozen and measured on the held-out pairs, TPR and FPR printed per dimensionality (and, for
comparison, those of the constants shipped in qc_score.py).

    # the full recalibration: 100 calibration + 100 held-out pairs per dimensionality (hours on a CPU)
    python benchmarks/calibrate_qc.py --ndim both --cal 100 --test 100 --cache /tmp/qc_components.json
    # a quick check of the script itself (minutes)
    python benchmarks/calibrate_qc.py --ndim both --cal 2 --test 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from unireg import api
from unireg.data.mni import load_mni
from unireg.data.synth import coarse_shape, deform_pair_field, make_moving, random_velocity
from unireg.evaluation import qc_score as Q
from unireg.features.mind import mind_ssc
from unireg.models.registrar import DEFAULT_WORKING
from unireg.preprocess import normalize_intensity, to_working_grid
from unireg.spatial.grid import warp
from unireg.spatial.jacobian import jacobian_determinant
from unireg.spatial.world import working_grid

CONTRASTS = ["t1", "t2", "pd", "flair", "ct"]
FEATURES = ["shift_ratio", "mismatch_fraction", "log1p_folded_percent", "mind_distance"]
AFF = np.eye(4)  # 2-D slices: 1 mm voxels
SPACING_3D = 2.0
AFF3 = np.diag([SPACING_3D, SPACING_3D, SPACING_3D, 1.0])  # 3-D blocks: 2 mm voxels
BLOCK_3D = 64


def _aff(nd: int) -> np.ndarray:
    return AFF if nd == 2 else AFF3


def _vox_mm(nd: int) -> float:
    return 1.0 if nd == 2 else SPACING_3D


def _feat_vector(c: dict) -> list[float]:
    return [c["shift_ratio"], c["mismatch_fraction"], math.log1p(c["folded_percent"]), c["mind_distance"]]


def _smooth_field(shape, max_mm: float, seed: int) -> torch.Tensor:
    cs = coarse_shape(shape, 8)
    factor = (shape[0] - 1) / (cs[0] - 1)
    v = random_velocity(cs, max_mm / factor, seed=seed)
    return deform_pair_field(v, shape)[0]


def _working_images(fixed: np.ndarray, moving: np.ndarray, affine_matrix: np.ndarray):
    """The pipeline's working-grid images for arrays on :func:`_aff`'s grid (see pipeline.py)."""
    nd = fixed.ndim
    aff, sp = _aff(nd), np.full(nd, _vox_mm(nd))
    w_shape, w_aff4 = working_grid(fixed.shape, aff, **DEFAULT_WORKING[nd])
    fixed_w = to_working_grid(normalize_intensity(fixed), aff, sp, w_shape, w_aff4)
    t = torch.as_tensor(affine_matrix, dtype=torch.float32)  # (nd+1)^2: fixed world -> moving world

    def amap(world, rows=None):
        return torch.einsum("ij,j...->i...", t[:nd, :nd], world) + t[:nd, nd].view(nd, *([1] * nd))

    moving_w = to_working_grid(normalize_intensity(moving), aff, sp, w_shape, w_aff4, world_map=amap)
    return fixed_w, moving_w


def _components(fixed_w, moving_w, disp) -> dict:
    jac = jacobian_determinant(disp)[0]
    ff, fm = mind_ssc(fixed_w[None]), mind_ssc(moving_w[None])
    mask = Q.scored_mask(fixed_w, Q.foreground_mask(fixed_w[0]), moving_w, disp)  # as score_registration
    comp = Q.qc_components(ff, warp(fm, disp, padding_mode="border"), jac, mask)
    warped = warp(moving_w[None], disp, padding_mode="border")[0, 0]
    ratio = Q.nmi_shift_ratio(fixed_w[0], warped, Q.foreground_mask(fixed_w[0]))  # as score_registration
    if ratio is not None and math.isfinite(float(ratio)):  # computed for every case here, for a flag there
        comp["nmi_shift_ratio"] = float(ratio)
    return comp


def real_label(epe: float, epe0: float) -> tuple[str, bool | None]:
    """Ground-truth label of a real registration: good if it removed at least a quarter of the
    initial misalignment, failed if it left the pair as misaligned as before or worse, else ambiguous
    (reported, but neither fitted nor counted)."""
    if epe <= 0.75 * epe0:
        return "good", False
    if epe >= epe0:
        return "failed_registration", True
    return "ambiguous", None


def _block(vol: np.ndarray, corner) -> np.ndarray:
    c = [int(np.clip(v, 0, n - BLOCK_3D)) for v, n in zip(corner, vol.shape)]
    return vol[c[0]:c[0] + BLOCK_3D, c[1]:c[1] + BLOCK_3D, c[2]:c[2] + BLOCK_3D].copy()


def make_pair_3d(t1: np.ndarray, seed: int):
    """A 3-D pair: a 64^3 block of the 2 mm template, its deformed copy, another block 25-45 mm away,
    and the block turned 90 degrees about x (the 'unrelated' moving)."""
    rng = np.random.default_rng(seed)
    corner = [int(rng.integers(0, max(n - BLOCK_3D, 0) + 1)) for n in t1.shape]
    fixed = _block(t1, corner)
    contrast = CONTRASTS[seed % len(CONTRASTS)]
    max_mm = float(rng.uniform(3, 10))
    sl = torch.from_numpy(fixed)
    v = random_velocity(coarse_shape(sl.shape, 4), max_mm / SPACING_3D / 4, seed=seed)
    moving = make_moving(sl, v, contrast=contrast, seed=seed).numpy()
    true_disp = deform_pair_field(v, sl.shape)[0][0].numpy() * SPACING_3D  # fixed->moving, mm
    off = np.zeros(3)
    ax = int(rng.integers(3))
    off[ax] = rng.choice([-1, 1]) * rng.uniform(25, 46) / SPACING_3D
    other0 = _block(t1, np.array(corner) + off)
    v2 = random_velocity(coarse_shape(sl.shape, 4), float(rng.uniform(3, 10)) / SPACING_3D / 4, seed=seed + 50_000)
    other = make_moving(torch.from_numpy(other0), v2, contrast=CONTRASTS[int(rng.integers(5))],
                        seed=seed + 50_000).numpy()
    coronal = np.ascontiguousarray(np.rot90(fixed, 1, axes=(1, 2)))
    return dict(z=corner[2], z_other=int(corner[ax] + off[ax]), contrast=contrast, max_mm=max_mm, fixed=fixed,
                moving=moving, other=other, coronal=coronal, true_disp=true_disp, rng=rng)


def make_pair(t1: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    z = int(rng.integers(45, 140))
    fixed = t1[:, :, z].copy()
    contrast = CONTRASTS[seed % len(CONTRASTS)]  # every contrast equally often
    max_mm = float(rng.uniform(3, 10))
    sl = torch.from_numpy(fixed)
    v = random_velocity(coarse_shape(sl.shape, 4), max_mm / 4, seed=seed)
    moving = make_moving(sl, v, contrast=contrast, seed=seed).numpy()
    true_disp = deform_pair_field(v, sl.shape)[0][0].numpy()  # fixed->moving, voxels == mm here
    # a "different subject": another slice far away, its own deformation and contrast
    z2 = int(np.clip(z + rng.choice([-1, 1]) * rng.integers(25, 46), 20, 170))
    v2 = random_velocity(coarse_shape(sl.shape, 4), float(rng.uniform(3, 10)) / 4, seed=seed + 50_000)
    other = make_moving(torch.from_numpy(t1[:, :, z2].copy()), v2, contrast=CONTRASTS[int(rng.integers(5))],
                        seed=seed + 50_000).numpy()
    yc = int(rng.integers(90, 140))
    coronal = t1[:, yc, :].copy()
    return dict(z=z, z_other=z2, contrast=contrast, max_mm=max_mm, fixed=fixed, moving=moving, other=other,
                coronal=coronal, true_disp=true_disp, rng=rng)


def run_pair(t1: np.ndarray, seed: int, nd: int = 2) -> list[dict]:
    p = make_pair_3d(t1, seed) if nd == 3 else make_pair(t1, seed)
    rng = p["rng"]
    rows = []
    aff = _aff(nd)
    w_mm = DEFAULT_WORKING[nd]["spacing"]  # working-grid voxel size: the displacements below are in its voxels

    def add(kind, comp, broken=True, **extra):
        rows.append(dict(seed=seed, ndim=nd, kind=kind, broken=broken, **comp, **extra))

    res = api.register((p["fixed"], aff), (p["moving"], aff), seed=0)
    rep = res.report
    fixed_w, moving_w = _working_images(p["fixed"], p["moving"], res.mapping.affine_matrix)
    disp = res.mapping.disp_vox.float()
    comp = _components(fixed_w, moving_w, disp)
    # the pipeline's own figures (computed in register_images) must be what we recompute here
    assert abs(comp["shift_ratio"] - rep["qc_components"]["shift_ratio"]) < 1e-3, (comp, rep["qc_components"])
    if "nmi_shift_ratio" in rep["qc_components"]:  # the pipeline asks the intensities about a flag only
        assert abs(comp["nmi_shift_ratio"] - rep["qc_components"]["nmi_shift_ratio"]) < 1e-3, (comp, rep["qc_components"])
    # ground truth, for the record only (the score never sees it): mean endpoint error in the brain
    fg = normalize_intensity(p["fixed"]) > 0.05
    epe = float(np.linalg.norm(res.warp_mm - p["true_disp"], axis=0)[fg].mean())
    epe0 = float(np.linalg.norm(p["true_disp"], axis=0)[fg].mean())
    kind, broken = real_label(epe, epe0)
    add(kind, rep["qc_components"], broken=broken, contrast=p["contrast"], max_mm=p["max_mm"], z=p["z"],
        epe_mm=epe, epe0_mm=epe0)
    shape = tuple(disp.shape[2:])

    if nd == 2:
        ang = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(ang), np.sin(ang)])
    else:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
    mag = rng.uniform(5, 15)  # mm

    def shift(mm):
        return torch.tensor(direction * mm / w_mm, dtype=torch.float32).view(1, nd, *([1] * nd))

    add("translation", _components(fixed_w, moving_w, disp + shift(mag)), mm=mag)
    add("flip", _components(fixed_w, moving_w.flip(-1 if nd == 2 else 2), disp))  # front-back
    for mm in (1, 2, 3):  # not counted: how small a uniform misalignment already raises the score
        add(f"sensitivity_{mm}mm", _components(fixed_w, moving_w, disp + shift(mm)), broken=None)
    big = float(rng.uniform(10, 20))
    add("random_deformation", _components(fixed_w, moving_w, disp + _smooth_field(shape, big / w_mm, seed + 70_000)),
        mm=big)
    _, other_w = _working_images(p["fixed"], p["other"], res.mapping.affine_matrix)
    add("swapped", _components(fixed_w, other_w, disp))
    g = torch.Generator().manual_seed(seed + 90_000)
    noise = torch.randn((1, nd) + shape, generator=g)
    from scipy import ndimage

    noise = torch.from_numpy(ndimage.gaussian_filter(noise.numpy(), (0, 0) + (1.0,) * nd)).float()
    amp = float(rng.uniform(2, 3))
    add("folding_noise", _components(fixed_w, moving_w, disp + noise * (amp / noise.std())), amp_vox=amp)

    if seed % 2 == 0:
        flipped = (p["moving"][:, ::-1] if nd == 2 else p["moving"][:, ::-1, :]).copy()  # front-back
        r2 = api.register((p["fixed"], aff), (flipped, aff), seed=0)
        add("registered_flipped", r2.report["qc_components"])
    else:
        r2 = api.register((p["fixed"], aff), (p["coronal"], aff), seed=0)
        add("registered_unrelated", r2.report["qc_components"])
    return rows


def collect(seeds, t1, label, nd: int = 2) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    for i, s in enumerate(seeds):
        rows += run_pair(t1, s, nd)
        print(f"  [{label}] pair {i + 1}/{len(seeds)} (seed {s}) {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 100) -> np.ndarray:
    """Class-balanced L2-regularised logistic regression by Newton steps; returns [b, w...]."""
    sw = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    xa = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xa.shape[1])
    reg = l2 * np.eye(len(w))
    reg[0, 0] = 0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xa @ w, -50, 50)))
        g = xa.T @ (sw * (p - y)) + reg @ w
        h = (xa * (sw * p * (1 - p))[:, None]).T @ xa + reg
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def choose_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising TPR - FPR; among equal ones, the middle of the widest gap."""
    s = np.sort(np.unique(scores))
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [1.0]])
    best, best_j, best_gap = 0.5, -1.0, -1.0
    for c in cands:
        j = (scores[y == 1] >= c).mean() - (scores[y == 0] >= c).mean()
        gap = np.min(np.abs(scores - c))
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and gap > best_gap):
            best, best_j, best_gap = float(c), j, gap
    return best


def rates(rows, weights, thr):
    out = {"fpr": None, "tpr": None, "by_kind": {}}
    kinds = sorted({r["kind"] for r in rows})
    for k in kinds:
        rs = [r for r in rows if r["kind"] == k]
        sc = [Q.combine(r, weights) for r in rs]
        out["by_kind"][k] = (sum(Q.flagged(r, r["ndim"], weights, thr) for r in rs), len(sc), float(np.min(sc)), float(np.max(sc)))
    good = [Q.flagged(r, r["ndim"], weights, thr) for r in rows if r["broken"] is False]
    bad = [Q.flagged(r, r["ndim"], weights, thr) for r in rows if r["broken"]]
    out["fpr"] = (sum(good), len(good))
    out["tpr"] = (sum(bad), len(bad))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cal", type=int, default=100, help="calibration pairs per dimensionality (seeds 0..N-1)")
    ap.add_argument("--test", type=int, default=100, help="held-out pairs per dimensionality (seeds 1000..)")
    ap.add_argument("--ndim", choices=["2", "3", "both"], default="both", help="dimensionalities of the pairs")
    ap.add_argument("--cache", type=Path, default=None,
                    help="JSON of components, written after every pair; a rerun resumes from it")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="fit and measure on the rows of these caches only (e.g. a 2-D and a 3-D run done in parallel)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    dims = [2, 3] if a.ndim == "both" else [int(a.ndim)]
    cal_seeds, test_seeds = list(range(a.cal)), list(range(1000, 1000 + a.test))
    if a.merge:
        data = {"cal": [], "test": []}
        for p in a.merge:
            part = json.loads(p.read_text())
            data["cal"] += part["cal"]
            data["test"] += part["test"]
    else:
        data = json.loads(a.cache.read_text()) if a.cache is not None and a.cache.is_file() else {"cal": [], "test": []}
        for nd in dims:
            t1 = load_mni(None if nd == 2 else SPACING_3D)["t1"].data[0]
            for part, seeds in (("cal", cal_seeds), ("test", test_seeds)):
                done = {r["seed"] for r in data[part] if r.get("ndim", 2) == nd}
                for seed in seeds:  # one pair at a time, the cache written after each (resumable)
                    if seed in done:
                        continue
                    data[part] += collect([seed], t1, f"{nd}-D {part} seed {seed}", nd)
                    if a.cache is not None:
                        tmp = a.cache.with_suffix(".tmp")
                        tmp.write_text(json.dumps(data))
                        tmp.replace(a.cache)
    cal, test = data["cal"], data["test"]
    for r in cal + test:
        r.setdefault("ndim", 2)  # caches written before 3-D pairs existed
    assert not {(r["ndim"], r["seed"]) for r in cal} & {(r["ndim"], r["seed"]) for r in test}

    amb = [r for r in cal + test if r["broken"] is None]
    cal = [r for r in cal if r["broken"] is not None]
    test = [r for r in test if r["broken"] is not None]
    x = np.array([_feat_vector(r) for r in cal])
    y = np.array([1.0 if r["broken"] else 0.0 for r in cal])
    w = fit_logistic(x, y)
    weights = {"intercept": float(w[0]), **{k: float(v) for k, v in zip(FEATURES, w[1:])}}
    weights = {k: round(v, 3) for k, v in weights.items()}
    cal_scores = np.array([Q.combine(r, weights) for r in cal])
    t = choose_threshold(cal_scores, y)
    # fold the chosen threshold into the intercept, so that the flag is simply qc_score >= 0.5
    weights["intercept"] = round(weights["intercept"] - math.log(t / (1 - t)), 3)
    thr = 0.5
    print(f"threshold maximising TPR - FPR on the calibration scores: {t:.3f} -> folded into the intercept")

    print("\ncomponents by kind (calibration set, median [min, max]):")
    for k in sorted({r["kind"] for r in cal}):
        rs = [r for r in cal if r["kind"] == k]
        txt = "  ".join(
            f"{f}={np.median([r[f] for r in rs]):.3f} [{min(r[f] for r in rs):.3f}, {max(r[f] for r in rs):.3f}]"
            for f in ("shift_ratio", "mismatch_fraction", "folded_percent", "mind_distance")
        )
        print(f"  {k:21s} n={len(rs):3d}  {txt}")
    # the intensities' veto (qc_score.NMI_SHARP): the broken registrations the score flags must keep
    # their flag, so the veto threshold may not exceed the lowest NMI shift ratio among them
    for nd in sorted({r["ndim"] for r in cal}):
        scored = [r for r in cal if r["ndim"] == nd and r["broken"] and "nmi_shift_ratio" in r
                  and Q.combine(r, weights) >= thr and r["folded_percent"] < Q.VETO_FOLDED]
        good = [r["nmi_shift_ratio"] for r in cal if r["ndim"] == nd and r["broken"] is False and "nmi_shift_ratio" in r]
        if scored and good:
            lowest = min(scored, key=lambda r: r["nmi_shift_ratio"])
            print(f"\n{nd}-D: highest nmi_shift_ratio of a good registration {max(good):.3f}; lowest among the flagged "
                  f"broken ones that do not fold {lowest['nmi_shift_ratio']:.3f} ({lowest['kind']}, seed {lowest['seed']}); "
                  f"NMI_SHARP[{nd}] in qc_score.py: {Q.NMI_SHARP[nd]}")
        for k in sorted({r["kind"] for r in cal}):
            v = [r["nmi_shift_ratio"] for r in cal if r["kind"] == k and "nmi_shift_ratio" in r]
            if v:
                print(f"  {k:21s} nmi_shift_ratio median {np.median(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
    print("\nQC_WEIGHTS =", json.dumps(weights))
    print(f"QC_THRESHOLD = {thr}")
    summary = []

    def _rate_line(label, rows, w, th):
        r = rates(rows, w, th)
        (fp, ng), (tp, nb) = r["fpr"], r["tpr"]
        return r, (f"{label} ({len({q['seed'] for q in rows})} pairs): TPR {tp}/{nb} = {tp / max(nb, 1):.3f}   "
                   f"FPR {fp}/{ng} = {fp / max(ng, 1):.3f}")

    for name, rows_all in (("calibration", cal), ("held-out", test)):
        for nd in sorted({q["ndim"] for q in rows_all}):
            r, line = _rate_line(f"{name} {nd}-D", [q for q in rows_all if q["ndim"] == nd], weights, thr)
            summary.append(line)
            print("\n" + line)
            for k, (n_flag, n, lo, hi) in r["by_kind"].items():
                print(f"  {k:21s} flagged {n_flag:3d}/{n:3d}   score range [{lo:.3f}, {hi:.3f}]")
    goods = sorted((r for r in cal + test + amb if "epe_mm" in r), key=lambda r: -Q.combine(r, weights))
    print("\nsensitivity (not counted): real registration + a uniform shift, both sets")
    for k in sorted({r["kind"] for r in amb if r["kind"].startswith("sensitivity")}):
        sc = np.array([Q.combine(r, weights) for r in amb if r["kind"] == k])
        print(f"  {k:21s} flagged {int((sc >= thr).sum()):3d}/{len(sc):3d}   median score {np.median(sc):.3f}")
    n_amb = sum(r["kind"] == "ambiguous" for r in amb)
    print(f"\nreal registrations of the synthetic pairs, highest scores first ({n_amb} ambiguous, not counted):")
    for r in goods[:12]:
        print(f"  seed {r['seed']:5d} z={r['z']:3d} {r['contrast']:5s} {r['kind']:19s} score {Q.combine(r, weights):.3f}"
              f"  true EPE {r['epe_mm']:.2f} mm (before {r['epe0_mm']:.2f})")
    epes = np.array([r["epe_mm"] for r in goods])
    print(f"  all {len(goods)}: true EPE median {np.median(epes):.2f} mm, max {epes.max():.2f} mm")
    for nd in sorted({q["ndim"] for q in test}):  # what the constants shipped in qc_score.py give
        summary.append(_rate_line(f"shipped QC_WEIGHTS, held-out {nd}-D", [q for q in test if q["ndim"] == nd],
                                  Q.QC_WEIGHTS, Q.QC_THRESHOLD)[1])
    print("\nsummary:\n  " + "\n  ".join(summary))
    if weights != {k: round(v, 3) for k, v in Q.QC_WEIGHTS.items()} or thr != Q.QC_THRESHOLD:
        print("\nnote: these differ from the constants in unireg/evaluation/qc_score.py")


if __name__ == "__main__":
    main()
