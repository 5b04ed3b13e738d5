"""The failure flag on real scans: how often it fires on good registrations, and on broken ones.

    python benchmarks/qc_real_scans.py [--pairs 4] [--dims 2,3] [--threads 2] [--out rows.json]
    python benchmarks/qc_real_scans.py --pairs 8 --start 4       # pairs 4-7 of each family, never run before

``benchmarks/calibrate_qc.py`` fits and measures the flag on MNI slices (1 mm) and blocks (2 mm); ``qc_suite.py``
counts its false alarms on the held-out suite's phantoms.  This script measures it on ``benchmarks/real_scans.py``'s
frozen pairs: real scans of other scanners at their own grids (a b=0 volume at 4x4x5 mm, an EPI at 2 mm, moved by
the suite's maps onto anisotropic, oblique and cropped grids).  Each pair is registered in-process with the defaults
(``unireg.api.register``; the pipeline's own QC inputs are captured) and labelled against the known map as
calibrate_qc.py labels its pairs: *good* (end-point error at most 0.75 x no registration's), *failed* (at least
no registration's), else *ambiguous*; an already aligned pair is *aligned* (kept within 0.3 mm) or *moved*.  Then
the registration is broken on purpose as calibrate_qc.py breaks its own, on the same working grid: a wrong
translation of 5-15 mm, the moving image flipped front-back, a random smooth deformation of 10-20 mm added, the
moving image replaced by another source's scan (``swapped``), each scored by the pipeline's own QC call.  Prints
flagged / scored per dimension and kind (a flag on *good* or *aligned* is a false alarm, a broken one not flagged
a miss) and each flagged good registration with its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_scans  # noqa: E402

KINDS = ("aligned", "moved", "good", "ambiguous", "failed_registration", "translation", "flip", "random_deformation",
         "swapped")
BROKEN = ("translation", "flip", "random_deformation", "swapped")
ALIGNED_MM = 0.05  # no registration's end-point error below this: an already aligned pair
KEPT_MM = 0.3  # ... kept aligned when the registration's error stays below this


@contextlib.contextmanager
def _capture():
    """The pipeline's QC call records its arguments (and still scores) inside the block."""
    from unireg.stages import finish

    seen: dict = {}
    real = finish.score_registration

    def recording(*args, **kwargs):
        seen.clear()
        seen.update(args=args, kwargs=kwargs)
        return real(*args, **kwargs)

    finish.score_registration = recording
    try:
        yield seen
    finally:
        finish.score_registration = real


def _score(args, kwargs, **change) -> dict:
    """The captured QC call again, with ``change`` (a replaced ``moving_w`` / ``disp_w``): flag, score, components."""
    from unireg.evaluation import qc_score as Q

    fixed_w, moving_w, disp_w, jac_w, *feats = args
    moving_w = change.get("moving_w", moving_w)
    disp_w = change.get("disp_w", disp_w)
    if "disp_w" in change:
        from unireg.spatial.jacobian import jacobian_determinant

        jac_w = jacobian_determinant(disp_w)[0]
    if "moving_w" in change and feats:  # the moving features, of the replaced image
        from unireg.features.mind import mind_ssc

        feats = [feats[0], mind_ssc(moving_w[None].float())]
    rep = Q.score_registration(fixed_w, moving_w, disp_w, jac_w, *feats, **kwargs)  # (under no_grad itself)
    return {"flag": bool(rep["qc_flag"]), "qc_score": rep["qc_score"], **rep["qc_components"]}


def _label(got: dict, none: dict) -> str:
    if none["epe_mm"] < ALIGNED_MM:
        return "aligned" if got["epe_mm"] < KEPT_MM else "moved"
    if got["epe_mm"] <= 0.75 * none["epe_mm"]:
        return "good"
    return "failed_registration" if got["epe_mm"] >= none["epe_mm"] else "ambiguous"


def run(dims, pairs: int, limit: int | None = None, start: int = 0) -> list[dict]:
    """Rows of the frozen pairs ``start`` to ``pairs - 1`` of each family of ``dims`` (the first ``limit`` of them;
    None: every one): the registration, then its broken copies (their draws seeded by the pair's name)."""
    import torch
    import torch.nn.functional as F
    from calibrate_qc import _smooth_field  # the random deformation calibrate_qc.py breaks its pairs with

    from unireg import api
    from unireg.evaluation.suite import scoring
    from unireg.evaluation.suite.cases import build_case

    rows: list[dict] = []
    others: dict[int, list] = {}  # per dimension: (source, moving working image) of the pairs so far
    t0 = time.perf_counter()
    specs = [c for c in real_scans.case_list(dims, pairs) if c.index >= real_scans.INDEX0 + start][:limit]
    for i, spec in enumerate(specs):
        case = build_case(spec, real_scans.anatomy(spec.anatomy, spec.ndim, spec.rng(0)))
        with _capture() as seen:
            res = api.register(api.as_image(case["fixed"]), api.as_image(case["moving"]))
        args, kwargs = seen["args"], seen["kwargs"]
        got = scoring.score_map(case, res.warp_mm)
        none = scoring.score_map(case, np.zeros_like(case["true_warp_mm"]))
        nd = spec.ndim
        base = dict(case=spec.name, dim=nd, source=spec.anatomy, grid=spec.grid, intensity=spec.intensity)
        kind = _label(got, none)
        scored = _score(args, kwargs)
        assert scored["flag"] == bool(res.report["qc_flag"]), (scored, res.report["qc_components"])  # the same call
        rows.append(dict(base, kind=kind, dice=round(got["dice"], 4), dice_none=round(none["dice"], 4),
                         epe_mm=round(got["epe_mm"], 3), epe_none_mm=round(none["epe_mm"], 3), **scored))
        moving_w, disp_w = args[1], args[2]
        shape = tuple(disp_w.shape[2:])
        w_mm = float(res.report["working_grid"]["spacing_mm"])  # displacements are in working voxels
        seed = zlib.crc32(spec.name.encode())
        rng = np.random.default_rng(seed)
        direction = rng.normal(size=nd)
        direction /= np.linalg.norm(direction)
        mag = float(rng.uniform(5, 15))
        shift = torch.tensor(direction * mag / w_mm, dtype=torch.float32).view(1, nd, *([1] * nd))
        rows.append(dict(base, kind="translation", mm=round(mag, 1), **_score(args, kwargs, disp_w=disp_w + shift)))
        rows.append(dict(base, kind="flip", **_score(args, kwargs, moving_w=moving_w.flip(-1 if nd == 2 else 2))))
        big = float(rng.uniform(10, 20))
        field = _smooth_field(shape, big / w_mm, seed % 1_000_000)
        rows.append(dict(base, kind="random_deformation", mm=round(big, 1),
                         **_score(args, kwargs, disp_w=disp_w + field)))
        other = [m for src, m in others.get(nd, []) if src != spec.anatomy]
        if other:
            mode = "bilinear" if nd == 2 else "trilinear"
            swapped = F.interpolate(other[-1][None], size=shape, mode=mode, align_corners=True)[0]
            rows.append(dict(base, kind="swapped", **_score(args, kwargs, moving_w=swapped)))
        others.setdefault(nd, []).append((spec.anatomy, moving_w.detach().clone()))
        print(f"  [{i + 1}/{len(specs)}] {spec.name}: {kind} {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    lines = []
    for nd in sorted({r["dim"] for r in rows}):
        lines.append(f"\n{nd}-D: flagged / scored")
        lines.append("| kind | flagged | what a flag is |")
        lines.append("|---|---|---|")
        for k in KINDS:
            rs = [r for r in rows if r["dim"] == nd and r["kind"] == k]
            if rs:
                what = {"aligned": "false alarm", "good": "false alarm", "ambiguous": "-", "moved": "right",
                        "failed_registration": "right"}.get(k, "right (broken on purpose)")
                lines.append(f"| {k} | {sum(r['flag'] for r in rs)}/{len(rs)} | {what} |")
    alarms = [r for r in rows if r["flag"] and r["kind"] in ("good", "aligned")]
    lines.append(f"\nflagged good or aligned registrations ({len(alarms)}):")
    for r in alarms:
        lines.append(f"  {r['case']}: Dice {r['dice_none']:.3f} -> {r['dice']:.3f}, EPE {r['epe_none_mm']:.2f} -> "
                     f"{r['epe_mm']:.2f} mm; score {r['qc_score']:.3f}, shift ratio {r['shift_ratio']:.3f}, "
                     f"mismatch {r['mismatch_fraction']:.3f}, NMI shift ratio {r.get('nmi_shift_ratio', 'none')}")
    missed = [r for r in rows if not r["flag"] and r["kind"] in BROKEN]
    lines.append(f"broken on purpose and not flagged: {len(missed)}")
    lines += [f"  {r['case']} {r['kind']}: score {r['qc_score']:.3f}, NMI shift ratio {r.get('nmi_shift_ratio')}"
              for r in missed]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="pairs per deformation family and dimension, as real_scans.py")
    ap.add_argument("--start", type=int, default=0, help="first pair of each family (0-3: the frozen set; 4 on: fresh)")
    ap.add_argument("--dims", default="2,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="one JSON row per registration or broken variant")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rows = run(tuple(int(d) for d in a.dims.split(",")), a.pairs, start=a.start)
    if a.out:
        a.out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
