"""Run ONE registration method on one pair folder, in its own process, and write a result folder
that ``unireg evaluate`` scores like any other: ``warp.nii.gz`` (ITK displacement field on the fixed
grid, fixed -> moving) and ``report.json`` (``runtime_s.total`` = the registration call alone,
``runtime_s.wall`` = this whole process incl. imports and I/O, ``peak_rss_mb`` = this process's peak
resident memory, which includes the Python interpreter and the libraries the method needs).

    python benchmarks/run_method.py METHOD PAIR_DIR OUT_DIR [--model CKPT] [--refine N] [--threads T]
    python benchmarks/run_method.py METHOD --jobs jobs.json   # [{"pair": ..., "out": ...}, ...]

With ``--jobs`` one process runs many pairs (imports are paid once: importing itk alone takes
tens of seconds on a small machine); ``peak_rss_mb`` is then the peak resident memory *sampled while
that pair ran* (psutil, every 10 ms; it includes the interpreter and libraries already loaded).

METHOD: ``unireg`` (UniReg network; ``--refine`` adds instance optimisation), ``cnn`` (the same code
path with the end-to-end raw-intensity checkpoint), ``ants`` (ANTsPy SyN, Mattes MI for the affine and
the SyN stages), ``elastix`` (itk-elastix affine + B-spline, AdvancedMattesMutualInformation).
ANTs and elastix never import torch, so their memory figure is not inflated by it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

T_PROCESS = time.perf_counter()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _read(path):
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr, np.asarray(img.affine, dtype=np.float64)


def _lps_geometry(affine, nd):
    """ITK origin/spacing/direction (LPS) of a RAS voxel-to-world affine's first ``nd`` axes."""
    import numpy as np

    flip = np.diag([-1.0, -1.0, 1.0])[:nd, :nd]
    a = flip @ affine[:nd, :nd]
    spacing = np.linalg.norm(a, axis=0)
    return flip @ affine[:nd, 3], spacing, a / spacing


def _ras_from_lps_vectors(vec_last):
    """(*S, nd) LPS displacements -> (nd, *S) RAS."""
    import numpy as np

    v = np.moveaxis(vec_last, -1, 0).astype(np.float32).copy()
    v[:2] *= -1.0
    return v


_MODELS: dict = {}


def run_unireg(pair: Path, model: str | None, refine: int) -> tuple:
    import torch  # noqa: F401

    import unireg.features.raw  # noqa: F401  (registers the "raw" extractor the CNN baseline uses)
    from unireg import api
    from unireg.io.image import read_image

    fixed, moving = read_image(pair / "fixed.nii.gz"), read_image(pair / "moving.nii.gz")
    key = (model, fixed.ndim)
    if key not in _MODELS:  # loaded once per process, outside the timed call
        _MODELS[key] = api.load_model(model, ndim=fixed.ndim)
    t0 = time.perf_counter()
    res = api.register(fixed, moving, model=_MODELS[key], refine=refine)
    secs = time.perf_counter() - t0
    meta = _MODELS[key].meta
    return res.warp_mm, fixed.affine, secs, {"model": res.report.get("model"), "model_path": model,
                                             "model_steps": meta.get("steps"), "refine": refine,
                                             "runtime_parts_s": res.report["runtime_s"]}


def run_ants(pair: Path, threads: int) -> tuple:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import tempfile

    import ants

    f_arr, f_aff = _read(pair / "fixed.nii.gz")
    m_arr, m_aff = _read(pair / "moving.nii.gz")
    nd = f_arr.ndim

    def to_ants(arr, aff):
        o, s, d = _lps_geometry(aff, nd)
        return ants.from_numpy(arr, origin=tuple(o), spacing=tuple(s), direction=d)

    fixed, moving = to_ants(f_arr, f_aff), to_ants(m_arr, m_aff)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        reg = ants.registration(fixed, moving, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes",
                                outprefix=os.path.join(tmp, "r"))
        field_path = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=os.path.join(tmp, "c"))
        secs = time.perf_counter() - t0
        field = ants.image_read(field_path).numpy()  # (*S, nd), LPS mm, fixed -> moving
    return _ras_from_lps_vectors(field), f_aff, secs, {"type_of_transform": "SyN", "metric": "mattes (MI)",
                                                        "ants_version": getattr(ants, "__version__", "?")}


def run_elastix(pair: Path, threads: int, grid_mm: float = 8.0) -> tuple:
    import itk
    import numpy as np

    f_arr, f_aff = _read(pair / "fixed.nii.gz")
    m_arr, m_aff = _read(pair / "moving.nii.gz")
    nd = f_arr.ndim

    def to_itk(arr, aff):
        img = itk.image_from_array(np.ascontiguousarray(arr.T))  # itk wants (z, y, x)
        o, s, d = _lps_geometry(aff, nd)
        img.SetOrigin([float(x) for x in o])
        img.SetSpacing([float(x) for x in s])
        img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(d)))
        return img

    fixed, moving = to_itk(f_arr, f_aff), to_itk(m_arr, m_aff)
    po = itk.ParameterObject.New()
    aff_map = po.GetDefaultParameterMap("affine")
    bs_map = po.GetDefaultParameterMap("bspline")
    bs_map["Metric"] = ["AdvancedMattesMutualInformation"]
    bs_map["Registration"] = ["MultiResolutionRegistration"]
    bs_map["FinalGridSpacingInPhysicalUnits"] = [str(grid_mm)]
    for m in (aff_map, bs_map):
        m["WriteResultImage"] = ["false"]
        m["Metric"] = ["AdvancedMattesMutualInformation"]
    po.AddParameterMap(aff_map)
    po.AddParameterMap(bs_map)
    t0 = time.perf_counter()
    _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=po, log_to_console=False,
                                            number_of_threads=threads)
    field = itk.transformix_deformation_field(moving, tp)
    secs = time.perf_counter() - t0
    arr = itk.array_from_image(field)  # (z, y, x, nd), LPS mm, fixed -> moving, on the fixed grid
    arr = np.transpose(arr, tuple(range(nd - 1, -1, -1)) + (nd,))
    return _ras_from_lps_vectors(arr), f_aff, secs, {"maps": "affine + bspline", "metric": "AdvancedMattesMutualInformation",
                                                     "final_grid_mm": grid_mm, "itk_elastix": itk.Version.GetITKVersion()}


class _RssSampler:
    """Peak resident memory of this process while a block runs (psutil, sampled every 10 ms)."""

    def __enter__(self):
        import threading

        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, self._proc.memory_info().rss)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.peak_mb = self.peak / 2**20


def run_one(method: str, pair: Path, out: Path, model, refine: int, threads: int) -> dict:
    t_job = time.perf_counter()
    with _RssSampler() as mem:
        if method in ("unireg", "cnn"):
            disp, aff, secs, info = run_unireg(pair, model, refine)
        elif method == "ants":
            disp, aff, secs, info = run_ants(pair, threads)
        else:
            disp, aff, secs, info = run_elastix(pair, threads)
    from unireg.io.warp import write_displacement_field  # numpy + nibabel only

    out.mkdir(parents=True, exist_ok=True)
    write_displacement_field(out / "warp.nii.gz", disp, aff)
    report = {"method": method, "pair": str(pair), "threads": threads, **info,
              "runtime_s": {"total": round(secs, 3), "job": round(time.perf_counter() - t_job, 3),
                            "process_so_far": round(time.perf_counter() - T_PROCESS, 3)},
              "peak_rss_mb": round(mem.peak_mb, 1), "process_max_rss_mb": round(_peak_mb(), 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({"method": method, "out": str(out), "seconds": report["runtime_s"]["total"],
                      "peak_rss_mb": report["peak_rss_mb"]}), flush=True)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=["unireg", "cnn", "ants", "elastix"])
    p.add_argument("pair", type=Path, nargs="?")
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--jobs", type=Path, help="JSON list of {pair, out}")
    p.add_argument("--model", default=None, help="checkpoint (unireg/cnn); default: the shipped model")
    p.add_argument("--refine", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    if a.method in ("unireg", "cnn"):
        import torch

        torch.set_num_threads(a.threads)
    if a.jobs is not None:
        jobs = [(Path(j["pair"]), Path(j["out"])) for j in json.loads(a.jobs.read_text())]
    elif a.pair is not None and a.out is not None:
        jobs = [(a.pair, a.out)]
    else:
        p.error("give PAIR_DIR OUT_DIR or --jobs")
    for pair, out in jobs:
        run_one(a.method, pair, out, a.model, a.refine, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
