"""Cross-domain benchmark: UniReg (trained on MNI T1 only) against ANTs SyN, elastix B-spline and an
end-to-end CNN, on pairs with a known deformation outside (and inside) the training domain.

    python benchmarks/cross_domain.py                 # 2-D and 3-D, 3 seeds per case
    python benchmarks/cross_domain.py --quick         # 1 seed per case
    python benchmarks/cross_domain.py --smoke         # tiny 2-D, in-process, < 30 s (the test suite's)

Writes ``benchmarks/results/cross_domain.md`` (+ ``.json``), box plots per case and a few QC panels
under ``benchmarks/results/cross_domain/``.  Every method runs in its own worker process
(``benchmarks/run_method.py``, one process per method and dimensionality, so imports are paid once),
writes a result folder, and every result folder is scored by the same code
(:func:`unireg.evaluation.evaluate.evaluate_result`): moving labels pulled through each method's
``warp.nii.gz`` with the same label interpolation, EPE against the true warp over the fixed image's
labelled tissue, folding recomputed from ``warp.nii.gz`` on the fixed grid with the same formula for every method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import CASE_TITLES, CASES, machine_description, make_case, write_case  # noqa: E402

METHODS = {
    "identity": "no registration",
    "unireg": "UniReg (network only)",
    "unireg_refine": "UniReg + refine 50",
    "ants": "ANTs SyN (MI)",
    "elastix": "elastix B-spline (MI)",
    "cnn": "CNN end-to-end (raw intensities)",
}


def _first_existing(*paths) -> str | None:
    for p in paths:
        if p and Path(p).is_file():
            return str(p)
    return None


def default_models(ndim: int) -> dict:
    return {
        "unireg": _first_existing(ROOT / f"src/unireg/weights/unireg_{ndim}d.pt", ROOT / f"runs/unireg_{ndim}d.pt"),
        "cnn": _first_existing(ROOT / f"src/unireg/weights/cnn_{ndim}d.pt", ROOT / f"runs/cnn_{ndim}d.pt"),
    }


def _importable(mod: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(mod) is not None else f"python package '{mod}' is not installed (pip install 'unireg[bench]')"


def _model_desc(path: str | None) -> str:
    if path is None:
        return "untrained (no checkpoint found)"
    try:
        import torch

        ck = torch.load(path, map_location="cpu", weights_only=False)
        meta = ck["config"].get("meta", {})
        return f"{Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path} (extractor {ck['config']['extractor']}, {meta.get('steps', '?')} steps, {meta.get('train_time_s', '?')} s)"
    except Exception as exc:  # pragma: no cover - descriptive only
        return f"{path} ({type(exc).__name__})"


# ------------------------------------------------------------------------------------------ running
def run_jobs(method: str, jobs: list[dict], model: str | None, refine: int, threads: int, in_process: bool, log) -> None:
    if not jobs:
        return
    worker = {"unireg_refine": "unireg"}.get(method, method)
    if in_process:
        import run_method

        for j in jobs:
            run_method.run_one(worker, Path(j["pair"]), Path(j["out"]), model, refine, threads)
        return
    jf = Path(jobs[0]["out"]).parent / f".jobs-{method}-{os.getpid()}.json"
    jf.parent.mkdir(parents=True, exist_ok=True)
    jf.write_text(json.dumps(jobs))
    cmd = [sys.executable, str(HERE / "run_method.py"), worker, "--jobs", str(jf), "--refine", str(refine), "--threads", str(threads)]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    log(f"  {method}: {len(jobs)} pair(s) in one worker process ...")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{method} worker failed ({r.returncode}):\n{r.stderr[-3000:]}")
    log(f"  {method}: done in {time.perf_counter() - t0:.0f} s")
    jf.unlink(missing_ok=True)


def write_identity(pair_dir: Path, out: Path) -> None:
    import numpy as np

    from unireg.io.warp import read_displacement_field, write_displacement_field

    d, aff = read_displacement_field(pair_dir / "true_warp.nii.gz")
    out.mkdir(parents=True, exist_ok=True)
    write_displacement_field(out / "warp.nii.gz", np.zeros_like(d), aff)
    (out / "report.json").write_text(json.dumps({"method": "identity"}))


def evaluate(pair_dir: Path, out: Path) -> dict:
    from unireg.evaluation.evaluate import evaluate_result

    row = evaluate_result(out, fixed_labels=pair_dir / "fixed_labels.nii.gz", moving_labels=pair_dir / "moving_labels.nii.gz",
                          true_warp=pair_dir / "true_warp.nii.gz", jacobian="warp", epe_mask=pair_dir / "fixed_labels.nii.gz")
    return row


# ------------------------------------------------------------------------------------------ report
def _stats(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return m, sd


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["ndim"], r["case"], r["method"]), []).append(r)
    out = []
    for (nd, case, method), rs in groups.items():
        agg = {"ndim": nd, "case": case, "method": method, "n": len(rs)}
        for k in ("dice_mean", "hd95_mean", "epe_mean", "epe_max", "folded_percent", "sdlogj", "seconds", "peak_mb"):
            agg[k], agg[k + "_sd"] = _stats([r.get(k) for r in rs])
        out.append(agg)
    order = {c: i for i, c in enumerate(CASES)}
    morder = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda a: (a["ndim"], order[a["case"]], morder[a["method"]]))


def _f(v, nd=3):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def markdown(aggs, cfg: dict) -> str:
    lines = ["# Cross-domain benchmark", "",
             "UniReg is trained on ONE dataset (the MNI ICBM152 T1 template, T1 contrast only). Every pair below is the",
             "template (or a random label-map phantom) against a copy deformed by a known smooth diffeomorphism",
             f"(max {cfg['max_disp_mm']:.0f} mm), so Dice, HD95 and the endpoint error (EPE) against the true warp are exact.", "",
             f"Command: `{cfg['command']}`  ", f"Machine: {cfg['machine']}  ",
             f"Date: {cfg['date']}; seeds per case: {cfg['seeds']}; threads per method: {cfg['threads']}; wall time of this invocation {cfg['wall_min']:.1f} min"
             + (f" ({cfg['reused_runs']} method runs reused from --work, computed by earlier invocations)." if cfg.get("reused_runs") else "."), "",
             "Columns: Dice = mean over labels (MNI: grey/white matter; phantoms: 10 random labels), mean ± sd over seeds;",
             "HD95 and EPE in mm (EPE = mean |u - u_true| over the labelled tissue of the fixed image, i.e. GM+WM or the phantom's body:",
             "background carries a true field but no image evidence); % folding = voxels with det(J) <= 0",
             "(recomputed from each method's warp.nii.gz on the fixed grid); s = the registration call alone (no imports,",
             "no file I/O; UniReg: affine + features + network (+ refine) + resampling); peak MB = peak resident memory of",
             "the method's worker process sampled while that pair ran (includes the interpreter and its libraries; one worker runs",
             "all pairs of a method and dimensionality, and memory the allocator kept from an earlier, larger pair still counts,",
             "so read it as an upper bound -- `python benchmarks/speed.py` (benchmarks/results/speed_cli.md) has one-pair, whole-process figures).",
             "Timings: one thread per method, on a shared 2-core machine (see the load note of speed_cli.md); compare within a row group.", ""]
    for nd in sorted({a["ndim"] for a in aggs}):
        sp = cfg["spacing_3d"] if nd == 3 else 1.0
        lines += [f"## {nd}-D ({'MNI at %g mm' % sp if nd == 3 else '1 mm axial slices of MNI'}; phantoms on the same kind of grid)", "",
                  "| case | method | Dice | HD95 mm | EPE mm | % folding | s | peak MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in [a for a in aggs if a["ndim"] == nd]:
            cost = a["method"] != "identity"
            lines.append(f"| {CASE_TITLES[a['case']]} | {METHODS[a['method']]} | {_f(a['dice_mean'])} ± {_f(a['dice_mean_sd'])} | "
                         f"{_f(a['hd95_mean'], 2)} | {_f(a['epe_mean'], 2)} ± {_f(a['epe_mean_sd'], 2)} | {_f(a['folded_percent'], 3)} | "
                         f"{_f(a['seconds'], 1) if cost else '–'} | {_f(a['peak_mb'], 0) if cost else '–'} |")
        lines.append("")
        # compact Dice summary: case x method
        meths = [m for m in METHODS if any(a["method"] == m and a["ndim"] == nd for a in aggs)]
        lines += [f"Dice summary ({nd}-D), case × method:", "", "| case | " + " | ".join(METHODS[m] for m in meths) + " |",
                  "|---|" + "---|" * len(meths)]
        for c in CASES:
            cells = []
            for m in meths:
                hit = [a for a in aggs if a["ndim"] == nd and a["case"] == c and a["method"] == m]
                cells.append(_f(hit[0]["dice_mean"]) if hit else "–")
            if any(x != "–" for x in cells):
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Models and settings", ""]
    for k, v in cfg["models"].items():
        lines.append(f"- {k}: {v}")
    for k, v in cfg["skipped"].items():
        lines.append(f"- **not run: {k}** — {v}")
    lines += ["- ANTs: `ants.registration(type_of_transform='SyN', aff_metric='mattes', syn_metric='mattes')`, default iterations;",
              "  the composed affine+SyN field from `ants.apply_transforms(..., compose=...)`.",
              "- elastix: itk-elastix default `affine` + `bspline` parameter maps, both with AdvancedMattesMutualInformation only,",
              "  final B-spline grid 8 mm; field from `itk.transformix_deformation_field`.",
              "- UniReg and the CNN: `unireg.api.register` with the affine pre-alignment (MIND-based for both), network only",
              "  (`refine=0`) unless stated.",
              "- Cases: modality shift = piecewise-linear intensity remaps of the T1 (unireg.data.synth.CONTRASTS) with a",
              "  smooth bias field (strength 0.2) and Gaussian noise (sd 0.02); resolution shift = T1 rendered at 1 mm and",
              "  averaged into 3 mm thick slices (1x1x3 mm in 3-D, 1x3 mm in 2-D), bias 0.3, noise 0.06 (3x lower SNR);",
              "  anatomy shift = SynthMorph-style random smooth label maps inside a random blob, rendered with a random",
              "  intensity per label, different draws for fixed and moving.", ""]
    if cfg.get("figures"):
        lines += ["Figures: " + ", ".join(f"[{Path(p).name}]({Path(p).relative_to(Path(cfg['md']).parent)})" for p in cfg["figures"]), ""]
    return "\n".join(lines)


def box_plots(rows, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for nd in sorted({r["ndim"] for r in rows}):
        for c in CASES:
            rs = [r for r in rows if r["ndim"] == nd and r["case"] == c]
            if not rs:
                continue
            meths = [m for m in METHODS if any(r["method"] == m for r in rs)]
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
            for ax, key, lab in zip(axes, ("dice_mean", "epe_mean"), ("Dice (mean over labels)", "EPE mm (mean)")):
                data = [[r[key] for r in rs if r["method"] == m and r.get(key) is not None] for m in meths]
                ax.boxplot(data, showmeans=True)
                ax.set_xticks(range(1, len(meths) + 1), [METHODS[m].replace(" (", "\n(") for m in meths], fontsize=6.5)
                ax.set_ylabel(lab)
                ax.grid(alpha=0.3)
            fig.suptitle(f"{nd}-D, {CASE_TITLES[c]} ({len(rs) // max(len(meths), 1)} pair(s))", fontsize=10)
            fig.tight_layout()
            p = out_dir / f"box_{nd}d_{c}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            paths.append(p)
    return paths


def qc_panel(pair_dir: Path, outs: dict[str, Path], path: Path, title: str) -> Path:
    """Fixed, moving, and the moving image warped by each method (one slice), edges of fixed overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from unireg import api
    from unireg.io.image import read_image

    fixed = read_image(pair_dir / "fixed.nii.gz")
    moving = read_image(pair_dir / "moving.nii.gz")
    flab = read_image(pair_dir / "fixed_labels.nii.gz", labels=True).data[0]

    def sl(vol):
        return vol[:, :, vol.shape[2] // 2].T[::-1] if vol.ndim == 3 else vol.T[::-1]

    zero = outs.get("identity")
    panels = [("fixed", fixed.data[0])]
    if zero is not None:
        panels.append(("moving (on fixed grid)", api.apply(zero / "warp.nii.gz", moving, fixed).data[0]))
    for m, o in outs.items():
        if m != "identity" and (o / "warp.nii.gz").is_file():
            panels.append((METHODS[m], api.apply(o / "warp.nii.gz", moving, fixed).data[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.8))
    edge = sl(flab)
    for ax, (name, vol) in zip(np.atleast_1d(axes), panels):
        im = sl(vol)
        ax.imshow(im, cmap="gray", vmin=np.percentile(im, 1), vmax=np.percentile(im, 99.5))
        ax.contour(edge, levels=np.unique(edge)[1:] - 0.5 if len(np.unique(edge)) > 1 else [0.5], colors="r", linewidths=0.4)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.suptitle(title + " (red: fixed label boundaries)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="UniReg cross-domain benchmark")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    p.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seeds-3d", type=int, default=None, help="seeds per 3-D case (default: --seeds)")
    p.add_argument("--quick", action="store_true", help="1 seed per case")
    p.add_argument("--smoke", action="store_true", help="tiny 2-D run in-process (T1 -> T2-like, 1 pair, refine 5), for the tests")
    p.add_argument("--spacing-3d", type=float, default=2.0, help="3-D fixed grid spacing in mm (1 = full resolution)")
    p.add_argument("--refine", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-2d"), p.add_argument("--model-3d"), p.add_argument("--cnn-2d"), p.add_argument("--cnn-3d")
    p.add_argument("--work", type=Path, help="keep pairs and result folders here (default: a temporary folder)")
    p.add_argument("--rerun", nargs="*", default=[], help="methods to recompute even if --work already holds their results")
    p.add_argument("--out", type=Path, default=HERE / "results" / "cross_domain.md")
    p.add_argument("--no-figures", action="store_true")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    if a.smoke:
        a.dims, a.cases, a.seeds, a.refine = [2], ["t2"], 1, 5
    elif a.quick:
        a.seeds = 1
    seeds_by_dim = {2: a.seeds, 3: a.seeds if (a.quick or a.seeds_3d is None) else a.seeds_3d}
    METHODS["unireg_refine"] = f"UniReg + refine {a.refine}"
    in_process = a.smoke
    log = (lambda *x: print(*x, flush=True))
    work = a.work or Path(tempfile.mkdtemp(prefix="unireg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fig_dir = a.out.parent / a.out.stem
    fig_dir.mkdir(parents=True, exist_ok=True)

    skipped: dict = {}
    models_desc: dict = {}
    methods = list(a.methods)
    for m, mod in (("ants", "ants"), ("elastix", "itk")):
        if m in methods and (why := _importable(mod)):
            skipped[METHODS[m]] = why
            methods.remove(m)
    if a.smoke and "elastix" in methods:  # importing itk alone takes 20-60 s on a 2-core machine
        skipped[METHODS["elastix"]] = "left out of --smoke (importing itk takes longer than the smoke budget)"
        methods.remove("elastix")

    import torch

    torch.set_num_threads(a.threads)
    rows: list[dict] = []
    qc_targets = []
    reused = 0
    for nd in a.dims:
        mdl = default_models(nd)
        unireg_model = getattr(a, f"model_{nd}d") or mdl["unireg"]
        cnn_model = getattr(a, f"cnn_{nd}d") or mdl["cnn"]
        for m in ("unireg", "unireg_refine"):
            if m in methods:
                models_desc[f"{METHODS[m]} {nd}-D"] = _model_desc(unireg_model)
        nd_methods = list(methods)
        if "cnn" in nd_methods:
            if cnn_model is None:
                skipped[f"{METHODS['cnn']} {nd}-D"] = (
                    f"no {nd}-D checkpoint (runs/cnn_{nd}d.pt); see experiments/cnn_{nd}d.yaml"
                    + (": the 3-D CNN was not trained on this 2-core machine while the 3-D UniReg model trained" if nd == 3 else ""))
                nd_methods.remove("cnn")
            else:
                models_desc[f"{METHODS['cnn']} {nd}-D"] = _model_desc(cnn_model)
        log(f"{nd}-D: synthesising {len(a.cases)} case(s) x {seeds_by_dim[nd]} seed(s)")
        pairs = []
        for c in a.cases:
            for s in range(seeds_by_dim[nd]):
                pd_ = work / "pairs" / f"{nd}d_{c}_s{s}"
                if not (pd_ / "meta.json").is_file():
                    pair = make_case(c, nd, s, spacing=a.spacing_3d if nd == 3 else None)
                    if a.smoke:  # tiny: every 3rd pixel of the 1 mm slice
                        pair = _shrink(pair, 3)
                    write_case(pair, pd_)
                pairs.append((c, s, pd_))
        for m in nd_methods:
            jobs = []
            for c, s, pd_ in pairs:
                out = work / "results" / m / pd_.name
                if m == "identity":
                    if not (out / "warp.nii.gz").is_file():
                        write_identity(pd_, out)
                    continue
                if m in a.rerun or not (out / "report.json").is_file():
                    jobs.append({"pair": str(pd_), "out": str(out)})
                else:
                    reused += 1
            model = {"unireg": unireg_model, "unireg_refine": unireg_model, "cnn": cnn_model}.get(m)
            refine = a.refine if m == "unireg_refine" else 0
            run_jobs(m, jobs, model, refine, a.threads, in_process, log)
        for c, s, pd_ in pairs:
            for m in nd_methods:
                out = work / "results" / m / pd_.name
                row = evaluate(pd_, out)
                row.update({"ndim": nd, "case": c, "seed": s, "method": m})
                rows.append(row)
            if s == 0 and c in ("t2", "ct", "aniso", "synth"):
                qc_targets.append((nd, c, pd_, {m: work / "results" / m / pd_.name for m in nd_methods}))
    # describe each network by what its result folders say they ran (checkpoints may change during a run)
    for nd in a.dims:
        for m in ("unireg", "unireg_refine", "cnn"):
            reps = sorted((work / "results" / m).glob(f"{nd}d_*/report.json")) if m in methods else []
            steps = {json.loads(r.read_text()).get("model_steps") for r in reps}
            paths = {json.loads(r.read_text()).get("model_path") for r in reps}
            if reps and None not in steps:
                key = f"{METHODS[m]} {nd}-D"
                models_desc[key] = f"{', '.join(sorted(str(p) for p in paths))} ({', '.join(str(x) for x in sorted(steps))} training steps)"
    aggs = aggregate(rows)
    figures = []
    if not a.no_figures:
        figures += box_plots(rows, fig_dir)
        for nd, c, pd_, outs in ([] if a.smoke else qc_targets[:8]):
            figures.append(qc_panel(pd_, outs, fig_dir / f"qc_{nd}d_{c}.png", f"{nd}-D {CASE_TITLES[c]}"))
    import datetime

    cfg = {"command": "python benchmarks/cross_domain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_description(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "seeds": " / ".join(f"{seeds_by_dim[d]} ({d}-D)" for d in a.dims), "threads": a.threads, "spacing_3d": a.spacing_3d, "max_disp_mm": 8.0,
           "models": models_desc, "skipped": skipped, "figures": [str(f) for f in figures], "md": str(a.out),
           "wall_min": (time.perf_counter() - t_start) / 60, "smoke": a.smoke, "reused_runs": reused}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(markdown(aggs, cfg))
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    a.out.with_suffix(".json").write_text(json.dumps(
        {"config": cfg, "summary": [{k: clean(v) for k, v in r.items()} for r in aggs],
         "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}, indent=1))
    log(f"wrote {a.out} and {a.out.with_suffix('.json')} ({len(rows)} scored runs, {cfg['wall_min']:.1f} min)")
    for k, v in skipped.items():
        log(f"not run: {k}: {v}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _shrink(pair: dict, k: int) -> dict:
    """Subsample a 2-D pair by ``k`` (smoke mode); the affines and the true warp follow."""
    import numpy as np

    out = dict(pair)
    for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
        arr, aff = pair[key]
        aff = aff.copy()
        aff[:3, :2] = aff[:3, :2] * k
        out[key] = (np.ascontiguousarray(arr[::k, ::k]), aff)
    out["true_warp_mm"] = np.ascontiguousarray(pair["true_warp_mm"][:, ::k, ::k])
    return out


if __name__ == "__main__":
    sys.exit(main())
