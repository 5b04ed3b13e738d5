"""Where do end-to-end CNNs break under modality shift?  A 2-D reproduction of the paper's mechanism
analysis (Shao & Joshi, arXiv 2512.23142): CNN failures under domain shift come from the early layers.

    python experiments/domain_shift/analyze.py [--pairs 6] [--adapt-steps 100] [--adapt-contrasts t2 ct]

Both models are the same UNet trained by the same trainer for the same budget on ONE dataset (MNI T1):
``cnn`` = raw intensities in, local NCC loss (experiments/cnn_2d.yaml); ``unireg`` = frozen MIND features
in (experiments/train_2d.yaml).  Three measurements:

(a) accuracy per contrast: Dice (GM/WM) and EPE (mm) of the network alone (``refine=0``, ``affine=False``:
    the pairs have no global misalignment, and the affine stage -- which is not under study here and
    fails on the CT-like contrast, see docs/domain_shift.md -- would confound the comparison) on
    T1 -> {T1, T2, PD, FLAIR, CT}-like pairs with known deformations;
(b) *which layers must change* to recover a shifted contrast: starting from the T1-trained CNN, adapt
    ONLY the stem (first conv block + its FiLM, 1.4k weights) vs ONLY the last decoder block + head
    (21k weights, a late-layer control with 15x more freedom) on T1 -> C pairs, same steps, same modality-independent
    loss (MIND-MSE + Dice); plus a "stem on T1 -> T1" control that gets the same extra training without
    seeing C.  If the stem alone recovers most of the loss and the late layers do not, the failure is
    early.  (The mirror of the paper's layer swap: the CNN's input width differs from MIND's, so a
    stem cannot be transplanted between the two models; re-fitting one block at a time is the cheap,
    well-posed version.)
(c) representational similarity per layer (stem, encoder levels, decoder levels): linear CKA and mean
    channel cosine between the activations for the same anatomy with the moving image in T1 vs in C
    (fixed image T1 in both), and how well the stem's similarity predicts the registration error
    (Pearson/Spearman over pairs x contrasts).

Writes ``docs/domain_shift.png`` and ``experiments/domain_shift/results.json``; docs/domain_shift.md
discusses the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import unireg.features.raw  # noqa: E402,F401  (registers the "raw" extractor)
from common import make_case  # noqa: E402
from unireg import api  # noqa: E402
from unireg.evaluation.metrics import dice, endpoint_error  # noqa: E402
from unireg.models.registrar import load_registrar  # noqa: E402
from unireg.preprocess import normalize_intensity  # noqa: E402

CONTRASTS = ["t1", "t2", "pd", "flair", "ct"]


def _first(*paths):
    for p in paths:
        if Path(p).is_file():
            return str(p)
    raise SystemExit(f"none of {paths} exists")


# ------------------------------------------------------------------------------------------ (a)
def score(reg, pair) -> dict:
    f_img, f_aff = pair["fixed"]
    res = api.register(pair["fixed"], pair["moving"], model=reg, refine=0, affine=False)
    ref = (f_img + np.linspace(0, 1e-3, f_img.size, dtype=np.float32).reshape(f_img.shape), f_aff)
    wl = api.apply((res.warp_mm, f_aff), pair["moving_labels"], ref, labels=True).data[0]
    d = dice(pair["fixed_labels"][0], wl, labels=[1, 2])["mean"]
    e = endpoint_error(res.warp_mm, pair["true_warp_mm"])["mean"]
    return {"dice": d, "epe": e}


# ------------------------------------------------------------------------------------------ (c)
LAYERS = ["stem", "enc1", "enc2", "enc3", "enc4", "dec1", "dec2", "dec3"]


def activations(reg, fixed: np.ndarray, moving: np.ndarray) -> dict[str, torch.Tensor]:
    """Activations of every UNet block for one pair on its own 1 mm grid (no affine: same anatomy)."""
    acts: dict = {}
    hooks = [reg.unet.stem.register_forward_hook(lambda m, i, o: acts.__setitem__("stem", o.detach()))]
    for k, blk in enumerate(reg.unet.down):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(f"enc{k + 1}", o.detach())))
    for k, blk in enumerate(reg.unet.up):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(f"dec{k + 1}", o.detach())))
    with torch.no_grad():
        f = torch.from_numpy(normalize_intensity(fixed))[None, None]
        m = torch.from_numpy(normalize_intensity(moving))[None, None]
        reg(reg.extract(f), reg.extract(m), 1.0)
        acts["input"] = reg.extract(m)  # what the moving branch receives (raw image or MIND)
    for h in hooks:
        h.remove()
    return acts


def linear_cka(x: torch.Tensor, y: torch.Tensor, max_n: int = 20000) -> float:
    """Linear CKA between two activation maps ``(1, C, *S)`` (positions = samples, channels = features)."""
    a = x[0].flatten(1).T.double()
    b = y[0].flatten(1).T.double()
    if a.shape[0] > max_n:
        idx = torch.linspace(0, a.shape[0] - 1, max_n).long()
        a, b = a[idx], b[idx]
    a = a - a.mean(0)
    b = b - b.mean(0)
    hsic = (b.T @ a).pow(2).sum()
    return float(hsic / ((a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()).clamp_min(1e-12))


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-8).mean())


# ------------------------------------------------------------------------------------------ (b)
class ContrastPairs:
    """The trainer's synthesizer, with the fixed view in T1 and the moving view in contrast ``c``."""

    def __init__(self, contrast: str, crop=(160, 192)):
        from unireg.training.dataset import PairSynthesizer

        self.s = PairSynthesizer(2, 1.0, list(crop), 8.0, ["t1"], 0.2, 0.02, 4.0, 0.04, 3.0)
        self.c = contrast

    def batch(self, seeds):
        items = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            src = self.s._slice_source(g)
            start = self.s._crop_start(src.shape[1:], g)
            self.s.contrasts = ["t1"]
            fixed, fl = self.s._view(src, g, start)
            self.s.contrasts = [self.c]
            moving, ml = self.s._view(src, g, start)
            items.append({"fixed": fixed, "moving": moving, "fixed_labels": fl, "moving_labels": ml})
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def adapt(reg, part: str, contrast: str, steps: int, batch: int, lr: float, seed: int = 0):
    """Copy of ``reg`` with only ``part`` ("stem" | "late") trained on T1 -> ``contrast`` pairs."""
    from unireg.training.config import TrainConfig
    from unireg.training.trainer import losses_for_batch

    model = copy.deepcopy(reg)
    model.unet.requires_grad_(False)
    train = [model.unet.stem] if part == "stem" else [model.unet.up[-1], model.unet.head]
    params = [p for m in train for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    cfg = TrainConfig(ndim=2, similarity="mind", dice_weight=0.5)
    opt = torch.optim.Adam(params, lr=lr)
    pairs = ContrastPairs(contrast)
    model.train()
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        b = pairs.batch([77_000_000 + seed * 100_000 + step * batch + i for i in range(batch)])
        lam = torch.from_numpy(np.exp(rng.uniform(np.log(0.1), np.log(10.0), batch))).float()
        terms = losses_for_batch(model, model.unet, b, lam, cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    model.eval()
    return model, {"trainable_params": int(sum(p.numel() for p in params)), "loss_first10": float(np.mean(losses[:10])),
                   "loss_last10": float(np.mean(losses[-10:]))}


def _corr(x, y) -> dict:
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    return {"pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0]), "n": int(len(x))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cnn", default=None)
    ap.add_argument("--unireg", default=None)
    ap.add_argument("--pairs", type=int, default=6, help="pairs (slices x deformations) per contrast")
    ap.add_argument("--adapt-steps", type=int, default=100)
    ap.add_argument("--adapt-batch", type=int, default=4)
    ap.add_argument("--adapt-lr", type=float, default=2e-3)
    ap.add_argument("--adapt-contrasts", nargs="*", default=["t2", "ct"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="only redraw --figure from an existing --out-json")
    ap.add_argument("--reuse-adapt", action="store_true",
                    help="take (b) from an existing --out-json made with the same CNN checkpoint (same steps)")
    ap.add_argument("--out-json", type=Path, default=HERE / "results.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "domain_shift.png")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.replot:
        old = json.loads(a.out_json.read_text())
        figure(old, list(old["similarity"]["cnn"]["t2"]), a.figure)
        return 0
    t0 = time.perf_counter()
    cnn_path = a.cnn or _first(ROOT / "src/unireg/weights/cnn_2d.pt", ROOT / "runs/cnn_2d.pt")
    uni_path = a.unireg or _first(ROOT / "src/unireg/weights/unireg_2d.pt", ROOT / "runs/unireg_2d.pt")
    models = {"cnn": load_registrar(cnn_path), "unireg": load_registrar(uni_path)}
    info = {k: {"path": p, "steps": m.meta.get("steps"), "train_time_s": m.meta.get("train_time_s"), "extractor": m.extractor_name}
            for (k, m), p in zip(models.items(), (cnn_path, uni_path))}
    print(json.dumps(info), flush=True)

    pairs = {c: [make_case(c, 2, s) for s in range(a.pairs)] for c in CONTRASTS}

    # (a) accuracy
    acc = {k: {c: [score(m, p) for p in pairs[c]] for c in CONTRASTS} for k, m in models.items()}
    for k in acc:
        print(k, {c: (round(np.mean([r["dice"] for r in v]), 3), round(np.mean([r["epe"] for r in v]), 2)) for c, v in acc[k].items()}, flush=True)

    # (c) similarity per layer: moving in T1 vs moving in C, same anatomy and deformation (same seed)
    sim = {k: {c: [] for c in CONTRASTS[1:]} for k in models}
    for k, m in models.items():
        for i in range(a.pairs):
            ref = activations(m, pairs["t1"][i]["fixed"][0], pairs["t1"][i]["moving"][0])
            for c in CONTRASTS[1:]:
                act = activations(m, pairs[c][i]["fixed"][0], pairs[c][i]["moving"][0])
                sim[k][c].append({lay: {"cka": linear_cka(ref[lay], act[lay]), "cos": mean_cosine(ref[lay], act[lay])}
                                  for lay in ["input"] + LAYERS if lay in ref})
    layers = [lay for lay in ["input"] + LAYERS if lay in sim["cnn"]["t2"][0]]
    print("CKA per layer:", {k: {c: [round(np.mean([s[lay]["cka"] for s in v]), 3) for lay in layers] for c, v in sim[k].items()} for k in sim}, flush=True)

    # correlation: stem similarity (and every other layer's) vs registration error, CNN, pairs x shifted contrasts
    corr = {}
    for k in models:
        xs = {lay: [] for lay in layers}
        epe, ddrop = [], []
        for c in CONTRASTS[1:]:
            for i in range(a.pairs):
                for lay in layers:
                    xs[lay].append(sim[k][c][i][lay]["cka"])
                epe.append(acc[k][c][i]["epe"])
                ddrop.append(acc[k]["t1"][i]["dice"] - acc[k][c][i]["dice"])
        corr[k] = {lay: {"vs_epe": _corr(xs[lay], epe), "vs_dice_drop": _corr(xs[lay], ddrop)} for lay in layers}
        corr[k]["_points"] = {"stem_cka": xs["stem"], "epe": epe, "dice_drop": ddrop}
    print("corr(stem CKA, EPE):", {k: corr[k]["stem"]["vs_epe"] for k in corr}, flush=True)

    # (b) adapt one block at a time
    adapt_res = {}
    if a.reuse_adapt and a.out_json.is_file():
        old = json.loads(a.out_json.read_text())
        if old.get("models", {}).get("cnn", {}).get("steps") == info["cnn"]["steps"]:
            adapt_res = old.get("adaptation", {})
            print("reusing (b) from", a.out_json, flush=True)
    for c in ([] if adapt_res else a.adapt_contrasts):
        for part, train_c in (("stem", c), ("late", c), ("stem", "t1")):
            name = f"{part} on T1->{train_c.upper()}"
            t1 = time.perf_counter()
            m2, meta = adapt(models["cnn"], part, train_c, a.adapt_steps, a.adapt_batch, a.adapt_lr)
            ev = [score(m2, p) for p in pairs[c]]
            ev_t1 = [score(m2, p) for p in pairs["t1"][: max(2, a.pairs // 2)]]
            act_sims = []
            for i in range(a.pairs):
                ref = activations(m2, pairs["t1"][i]["fixed"][0], pairs["t1"][i]["moving"][0])
                act = activations(m2, pairs[c][i]["fixed"][0], pairs[c][i]["moving"][0])
                act_sims.append(linear_cka(ref["stem"], act["stem"]))
            adapt_res.setdefault(c, {})[name] = {
                **meta, "dice": float(np.mean([r["dice"] for r in ev])), "epe": float(np.mean([r["epe"] for r in ev])),
                "dice_t1": float(np.mean([r["dice"] for r in ev_t1])), "stem_cka": float(np.mean(act_sims)),
                "seconds": round(time.perf_counter() - t1, 1)}
            print(c, name, adapt_res[c][name], flush=True)

    summary = {
        "models": info,
        "accuracy": {k: {c: {"dice": float(np.mean([r["dice"] for r in v])), "dice_sd": float(np.std([r["dice"] for r in v])),
                             "epe": float(np.mean([r["epe"] for r in v])), "epe_sd": float(np.std([r["epe"] for r in v]))}
                         for c, v in acc[k].items()} for k in acc},
        "identity": {c: float(np.mean([endpoint_error(np.zeros_like(p["true_warp_mm"]), p["true_warp_mm"])["mean"] for p in pairs[c]])) for c in ["t1"]},
        "similarity": {k: {c: {lay: {"cka": float(np.mean([s[lay]["cka"] for s in v])), "cos": float(np.mean([s[lay]["cos"] for s in v]))}
                               for lay in layers} for c, v in sim[k].items()} for k in sim},
        "correlation": {k: {lay: v for lay, v in corr[k].items() if lay != "_points"} for k in corr},
        "points": {k: corr[k]["_points"] for k in corr},
        "adaptation": adapt_res,
        "settings": vars(a) | {"out_json": str(a.out_json), "figure": str(a.figure)},
        "per_pair": acc,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    a.out_json.write_text(json.dumps(summary, indent=1, default=str))
    figure(summary, layers, a.figure)
    print(f"wrote {a.out_json} and {a.figure} in {summary['wall_s']:.0f} s")
    return 0


def figure(s: dict, layers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(13, 9.5))
    ax = ax.ravel()
    x = np.arange(len(CONTRASTS))
    for j, (k, lab) in enumerate((("cnn", "end-to-end CNN (raw)"), ("unireg", "UniReg (MIND)"))):
        ax[0].bar(x + (j - 0.5) * 0.38, [s["accuracy"][k][c]["dice"] for c in CONTRASTS], 0.38,
                  yerr=[s["accuracy"][k][c]["dice_sd"] for c in CONTRASTS], label=lab)
    ax[0].set_xticks(x, [c.upper() for c in CONTRASTS])
    ax[0].set_ylabel("Dice (GM/WM), network only")
    ax[0].set_ylim(0.4, 1.0)
    ax[0].set_title("(a) trained on T1 only; moving contrast varies")
    ax[0].legend(fontsize=8)
    lx = np.arange(len(layers))
    for c, col in zip(CONTRASTS[1:], ["C0", "C1", "C2", "C3"]):
        ax[1].plot(lx, [s["similarity"]["cnn"][c][lay]["cka"] for lay in layers], "-o", color=col, label=f"CNN {c.upper()}")
        ax[1].plot(lx, [s["similarity"]["unireg"][c][lay]["cka"] for lay in layers], "--s", color=col, alpha=0.6, label=f"UniReg {c.upper()}")
    ax[1].set_xticks(lx, layers, rotation=45, fontsize=8)
    ax[1].set_ylabel("linear CKA, moving in T1 vs in C")
    ax[1].set_title("(c) representation similarity per layer")
    ax[1].legend(fontsize=6, ncol=2)
    for k, mk in (("cnn", "o"), ("unireg", "s")):
        p = s["points"][k]
        r = s["correlation"][k]["stem"]["vs_epe"]
        ax[2].scatter(p["stem_cka"], p["epe"], marker=mk, alpha=0.7, label=f"{k}: Pearson r={r['pearson']:.2f}, Spearman={r['spearman']:.2f}")
    ax[2].set_xlabel("stem CKA (T1 vs shifted contrast)")
    ax[2].set_ylabel("EPE mm (shifted contrast)")
    ax[2].set_title("(c) early-layer similarity vs error")
    ax[2].legend(fontsize=7)
    names, vals, cols = [], [], []
    for c, arms in s["adaptation"].items():
        names.append(f"CNN {c.upper()}\n(T1-trained)")
        vals.append(s["accuracy"]["cnn"][c]["dice"])
        cols.append("C0")
        for n, r in arms.items():
            names.append(f"{c.upper()}: {n}\n({r['trainable_params']} w)")
            vals.append(r["dice"])
            cols.append({"stem": "C2", "late": "C3"}[n.split()[0]] if "T1->T1" not in n else "C7")
        names.append(f"UniReg {c.upper()}")
        vals.append(s["accuracy"]["unireg"][c]["dice"])
        cols.append("C1")
    ax[3].bar(range(len(vals)), vals, color=cols)
    ax[3].set_xticks(range(len(vals)), names, rotation=70, fontsize=6)
    ax[3].set_ylim(0.4, 1.0)
    ax[3].set_ylabel("Dice on the shifted contrast")
    ax[3].set_title("(b) adapt one block of the CNN, same steps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
