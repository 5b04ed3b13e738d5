"""``unireg`` command line.

Exit status (README "Exit status"): 0 success; 2 bad input (one line on stderr naming the file);
3 registration flagged as failed (outputs still written, for inspection; ``--allow-flagged`` keeps
0); 1 internal error (one line; ``--debug`` shows the traceback); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UniRegError

# Imports of numpy, torch and the rest of the package stay inside the commands: `unireg --help`
# imports only typer and this package's light modules (measured with
# `python -X importtime -c "import unireg.cli.main"`: ~0.06 s here, versus ~2 s once torch loads).
from ..verdict import EXIT_BAD_INPUT, EXIT_FLAGGED, EXIT_INTERNAL, EXIT_INTERRUPTED
from . import options
from .allocator import keep_freed_memory
from .group import UniRegGroup

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=UniRegGroup,
                  help="UniReg: universal deformable image registration.  Exit status: 0 ok, 2 bad input, "
                       "3 registration flagged as failed (outputs written), 1 internal error.")

_STATE = {"debug": False}


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"unireg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch CPU threads (default: torch's choice); "
                                               "also accepted after the command."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    _STATE["debug"] = debug
    if threads is not None:
        os.environ["UNIREG_THREADS"] = str(threads)


def _setup_threads():
    n = os.environ.get("UNIREG_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def threads_set_by_command(fn):
    """Mark a command that calls :func:`_setup_threads` (which imports torch) itself, once it has
    started what can run beside that import (``register``: reading its inputs)."""
    fn.sets_threads = True
    return fn


def guarded(fn):
    """Turn UniRegError (and other input errors) into one stderr line + exit 2; anything else
    unexpected into one line + exit 1 (``--debug``: the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if not getattr(fn, "sets_threads", False):
                _setup_threads()
            return fn(*args, **kwargs)
        except UniRegError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"unireg: error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except MemoryError:
            if _STATE["debug"]:
                raise
            typer.echo("unireg: error: out of memory (try a coarser working grid or --device cuda)", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as exc:
            if _STATE["debug"]:
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"unireg: error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as exc:  # a bug, not the user's input: say so in one line, exit 1
            if _STATE["debug"]:
                raise
            msg = " ".join(str(exc).split())[:300]
            typer.echo(f"unireg: internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)",
                       err=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _print_summary(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..verdict import describe, judge

    con = Console(stderr=False)
    t = Table(title=f"UniReg -> {out}", show_header=True)
    t.add_column("figure")
    t.add_column("value", justify="right")
    if "dice" in report:
        t.add_row("Dice before (mean)", f"{report['dice_before']['mean']:.4f}")
        t.add_row("Dice after (mean)", f"{report['dice']['mean']:.4f}")
    t.add_row("folded voxels %", f"{report['folded_percent']:.4f}")
    t.add_row("SDlogJ", f"{report['sdlogj']:.4f}")
    if report.get("qc_score") is not None:
        t.add_row("failure score (flag >= %g)" % report.get("qc_threshold", 0.5), f"{report['qc_score']:.3f}")
    for k, v in report["runtime_s"].items():
        t.add_row(f"time {k} (s)", f"{v:.2f}")
    t.add_row("model", str(report.get("model")))
    if report.get("transform", "deformable") != "deformable":
        t.add_row("transform", str(report["transform"]))
    con.print(t)
    if report.get("warning"):
        con.print(f"[yellow]note:[/yellow] {report['warning']}")
    v_raw = report.get("verdict")
    verdict: dict = v_raw if isinstance(v_raw, dict) else judge(report)
    for n in verdict.get("notes", []):
        con.print(f"[yellow]note:[/yellow] {n}")
    colour = "red" if verdict.get("failed") else ("green" if verdict.get("qc_score") is not None else "yellow")
    # plain text after the markup so that a log or a grep sees one line: "verdict: FAILED (...): reason"
    con.print(f"[bold {colour}]verdict:[/bold {colour}] {describe(verdict)}",
              markup=True, highlight=False, soft_wrap=True)


def _exit_for_verdict(report: dict, allow_flagged: bool) -> None:
    v = report.get("verdict") or {}
    if v.get("failed") and not allow_flagged:
        typer.echo("unireg: registration flagged as failed (exit status 3; outputs written for inspection; "
                   "--allow-flagged exits 0)", err=True)
        raise typer.Exit(EXIT_FLAGGED)


def _cleanup_created(created: list[Path]) -> list[Path]:
    """Remove the folders this run created (deepest first) if they are empty; returns those removed."""
    removed = []
    for p in created:
        try:
            p.rmdir()
            removed.append(p)
        except OSError:
            break
    return removed


def _say_interrupted(stage: str | None, out: Path, created: list[Path]) -> None:
    removed = _cleanup_created(created)
    kept = sorted(q.name for q in out.iterdir()) if out.is_dir() else []
    where = f" during {stage}" if stage else ""
    if kept:
        what = f"kept in {out}: {', '.join(kept)} (files written before; nothing of this run is half-written)"
    else:
        what = "no outputs written" + (f"; removed the empty folder {removed[-1]}" if removed else "")
    typer.echo(f"unireg: interrupted{where}: {what}", err=True)


def _untrained_warning(reg, extractor: str | None, refine: int | None, model=None) -> str | None:
    if reg.trained:
        return None
    what = (f"the model {model} is untrained" if model not in (None, "default") else
            f"no trained model for extractor '{extractor or reg.extractor_name}' in {reg.ndim}-D")
    how = ("the default multi-resolution refinement" if refine is None else
           f"{refine} refinement (instance-optimisation) steps per level")
    return (
        f"unireg: warning: {what}; the UNet is untrained and not used, so the deformation comes from {how}"
        + (" -- with --refine 0 there is no deformable registration" if refine == 0 else "")
    )


@app.command()
@guarded
@threads_set_by_command
def register(
    fixed: Path = typer.Argument(..., help="Fixed (reference) image: a file or a DICOM series folder."),
    moving: Path = typer.Argument(..., help="Moving image, resampled onto the fixed grid (file or DICOM folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Label map of the moving image to warp (its grid or its own)."
    ),
    fixed_labels: Optional[Path] = typer.Option(
        None, "--fixed-labels", help="Fixed label map (any grid): Dice before/after."
    ),
    model: Optional[str] = options.MODEL,
    extractor: Optional[str] = options.EXTRACTOR,
    extractor_weights: Optional[Path] = options.EXTRACTOR_WEIGHTS,
    no_affine: bool = options.NO_AFFINE,
    transform: str = options.TRANSFORM,
    initial_transform: Optional[Path] = options.INITIAL_TRANSFORM,
    fixed_mask: Optional[Path] = options.FIXED_MASK,
    moving_mask: Optional[Path] = options.MOVING_MASK,
    refine: Optional[int] = options.REFINE,
    fast: bool = options.FAST,
    keep_all_stages: bool = options.KEEP_ALL_STAGES,
    no_denoise: bool = options.NO_DENOISE,
    smoothness: float = options.SMOOTHNESS,
    device: str = options.DEVICE,
    seed: int = options.SEED,
    no_qc: bool = typer.Option(False, "--no-qc", help="Skip the failure score, qc.png and report.html."),
    allow_flagged: bool = options.ALLOW_FLAGGED,
    fmt: Optional[str] = options.FORMAT,
    outputs: Optional[str] = options.OUTPUTS,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
):
    """Register MOVING onto FIXED and write warped image, warps, affine.mat, Jacobian, report and QC.

    Exit status 3 when the registration is flagged as failed (outputs are still written).
    """
    from ..io.image import PendingReads  # numpy and nibabel only

    # the inputs are read by threads while torch loads (~2 s here; decompression releases the GIL):
    # their errors are raised below, after the checks of the command line and the output folder
    reads = PendingReads([(fixed, False), (moving, False), (labels, True), (fixed_labels, True)])
    _setup_threads()
    from .. import api
    from ..errors import UniRegError
    from ..io.atomic import check_output_dir
    from ..outputs import guard_inputs, output_names, parse_outputs, prefetch_report_modules
    from ..warmup import start as warm_up_device
    from .progress import StageProgress

    warm_up_device(device)  # a GPU's one-off start-up costs overlap the reading below
    wanted = parse_outputs(outputs)  # an unknown name is a bad input before anything runs
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    check_output_dir(out)
    prog = StageProgress(enabled=not quiet)
    try:
        # refuse an --out that would overwrite an input before the (long) registration, not after it
        guard_inputs({k: out / v for k, v in output_names(fmt, fixed).items()},
                      [str(p) for p in (fixed, moving, labels, fixed_labels) if p])
        fixed_img, moving_img, labels_img, fixed_labels_img = reads.result()
        assert fixed_img is not None and moving_img is not None  # given (not None), hence read
        if not no_qc and (wanted is None or wanted & {"qc", "html"}):
            prefetch_report_modules(fixed_img.ndim)
        if moving_img.ndim != fixed_img.ndim:
            raise UniRegError(f"moving image is {moving_img.ndim}-D but the fixed image is {fixed_img.ndim}-D", moving)
        reg = api.load_model(model, ndim=fixed_img.ndim, extractor=extractor, extractor_weights=extractor_weights)
        if model not in (None, "default"):
            reg.meta.setdefault("name", str(model))
        # said when the registration starts, i.e. once every input has been validated
        prog.warning = _untrained_warning(reg, extractor, refine, model)
        with prog:
            result = api.register(
                fixed_img, moving_img, model=reg, extractor=extractor, labels=labels_img,
                fixed_labels=fixed_labels_img, affine=not no_affine, refine=refine, smoothness=smoothness,
                device=device, seed=seed, qc=not no_qc, progress=prog, extractor_weights=extractor_weights,
                fixed_mask=fixed_mask, moving_mask=moving_mask, initial_transform=initial_transform,
                fast=fast, do_no_harm=not keep_all_stages, transform=transform, denoise=not no_denoise,
            )
            prog("write")
            result.save(out, qc=not no_qc, html=not no_qc, fmt=fmt, outputs=outputs)
    except (UniRegError, OSError, MemoryError):
        # a failed run leaves nothing behind: not even the --out folders it created (rmdir: only if empty)
        _cleanup_created(created)
        raise
    except KeyboardInterrupt:
        _say_interrupted(prog.current, out, created)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_summary(result.report, out)
    _STATE["finished"] = True  # every output written: main() may skip the interpreter's teardown
    _exit_for_verdict(result.report, allow_flagged)


@app.command()
@guarded
@threads_set_by_command
def apply(
    paths: List[Path] = typer.Argument(..., metavar="[WARP] IMAGE",
                                       help="warp.nii.gz written by `unireg register`, then the image or label map "
                                            "on the moving image's world space; with -t only IMAGE."),
    ref: Path = typer.Option(..., "--ref", "-r", help="Reference (fixed) image defining the output grid."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.nii.gz, .nii, .mha, .nrrd)."),
    transform: Optional[List[str]] = typer.Option(
        None, "--transform", "-t", metavar="FILE|[FILE,1]",
        help="Transform, repeatable, in antsApplyTransforms order: e.g. -t deformable_warp.nii.gz -t affine.mat "
             "(= warp.nii.gz); '[affine.mat,1]' inverts an affine."),
    interpolation: Optional[str] = typer.Option(
        None, "--interpolation", "-n", metavar="linear|bspline|nearest|labelwise",
        help="Interpolation (default: linear, labelwise with --labels)."),
    labels: bool = typer.Option(False, "--labels",
                                help="IMAGE is a label map (integers kept; label-wise interpolation)."),
    device: str = options.DEVICE,
):
    """Apply a saved warp, or a chain of transforms (-t, as antsApplyTransforms), to another image or label map."""
    from ..interpolation import check_interpolation, reads_labels
    from ..io.image import PendingReads  # numpy and nibabel only
    from ..io.warp import read_displacement_field

    if transform:
        if len(paths) != 1:
            raise UniRegError("with -t give only IMAGE (the transforms come from -t)")
        image, chain = paths[0], list(transform)
    else:
        if len(paths) != 2:
            raise UniRegError("give WARP IMAGE, or IMAGE with one or more -t transforms")
        chain, image = None, paths[1]
    # the warp (or the -t chain's files), the image and the reference are read by threads while torch
    # loads (as `register` reads its inputs); their errors are raised below after the other checks, in
    # the order api.apply reads them (transforms, image, reference)
    from ..transforms import load_chain, parse_transform_spec  # numpy and nibabel until a chain is applied

    interp = check_interpolation(interpolation, labels)
    if chain is None:
        field = PendingReads([(paths[0], False)], read=lambda p, _: read_displacement_field(p))
    else:
        field = PendingReads([(chain, False)], read=lambda items, _: load_chain(items))
    reads = PendingReads([(image, reads_labels(chain is not None, labels, interp)), (ref, False)])
    _setup_threads()
    import numpy as np

    from .. import api
    from ..io.image import write_image
    from ..io.slices import as_file
    from ..outputs import guard_inputs

    warp_in = [str(paths[0])] if chain is None else [parse_transform_spec(str(t))[0] for t in chain]
    guard_inputs({"out": out}, [*warp_in, str(image), str(ref)])
    api.check_device(device)
    warp = field.result()[0]  # (field, affine), or the chain's loaded transforms
    image_img, ref_img = reads.result()
    res = api.apply(warp, image_img, ref_img, labels=labels, interpolation=interp, device=device)
    keep_int = labels or interpolation == "labelwise" or res.data.dtype.kind in "iu"
    write_image(out, *as_file(res, res.data), dtype=None if keep_int else np.float32)  # a single slice as it came
    typer.echo(str(out))
    _STATE["finished"] = True  # written: main() may skip the interpreter's teardown (~0.5 s at 1 mm)


@app.command("apply-points")
@guarded
@threads_set_by_command
def apply_points(
    warp: Path = typer.Argument(..., help="warp.nii.gz (fixed->moving points) or inverse_warp.nii.gz (moving->fixed)."),
    points: Path = typer.Argument(..., help="CSV with columns x,y[,z] in world mm."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV."),
    lps: bool = typer.Option(False, "--lps", help="Coordinates are LPS (ITK/ANTs) instead of RAS."),
    device: str = options.DEVICE,
):
    """Map a CSV of world points through a warp (x + u(x))."""
    from ..io.image import PendingReads  # numpy and nibabel only
    from ..io.warp import read_displacement_field

    # the warp is read by a thread while torch loads; its errors are raised after the points' (as before)
    field = PendingReads([(warp, False)], read=lambda p, _: read_displacement_field(p))
    _setup_threads()
    import warnings

    from .. import api
    from ..io.points import read_points, write_points
    from ..outputs import guard_inputs

    guard_inputs({"out": out}, [str(warp), str(points)])
    pts, table = read_points(points, lps=lps)
    api.check_device(device)
    disp = field.result()[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", api.PointsOutsideWarning)
        mapped = api.apply_points(disp, pts, device=device)
    for w in caught:
        if issubclass(w.category, api.PointsOutsideWarning):
            typer.echo(f"unireg: warning: {w.message}", err=True)
    write_points(out, mapped, table, lps=lps)
    typer.echo(str(out))
    _STATE["finished"] = True


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("unireg-demo"), "--out", "-o", help="Output folder."),
    contrast: str = typer.Option("t2", "--contrast", help="Moving contrast: t1, t2, pd, flair, ct."),
    refine: Optional[int] = options.REFINE,
    smoothness: float = options.SMOOTHNESS,
    seed: int = options.SEED,
    allow_flagged: bool = options.ALLOW_FLAGGED,
):
    """Register the MNI T1 against a deformed copy in another contrast; print Dice and runtime."""
    from ..data.synth import CONTRASTS
    from ..demo import run_demo
    from ..io.atomic import check_output_dir

    if contrast not in CONTRASTS:
        raise UniRegError(f"unknown contrast '{contrast}'; choose one of {', '.join(CONTRASTS)}")
    from .progress import StageProgress

    check_output_dir(out)
    try:
        with StageProgress() as prog:
            rep = run_demo(out, contrast=contrast, refine=refine, smoothness=smoothness, seed=seed, progress=prog)
    except KeyboardInterrupt:
        typer.echo(f"unireg: interrupted during {prog.current or 'start-up'}; files already in {out}/ are complete "
                   "(each is written atomically)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_summary(rep, out)
    typer.echo(f"outputs in {out}/ (qc.png, report.html, warped.nii.gz, warp.nii.gz, ...)")
    _exit_for_verdict(rep, allow_flagged)


def _register_optional_commands():
    """Commands living in their own modules (training, batch, evaluation, reports)."""
    for mod in ("train_cmd", "batch_cmd", "evaluate_cmd", "report_cmd"):
        try:
            m = importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(mod):
                continue
            raise
        m.add_to(app, guarded)


_register_optional_commands()


def main() -> None:
    """The ``unireg`` console script: :data:`app`; after a ``register`` that has written every output
    (whatever its verdict), or an ``apply`` / ``apply-points`` that has written its file, the process
    ends with ``os._exit`` once stdout and stderr are flushed, skipping the interpreter's teardown:
    freeing a registration's arrays and unloading torch took 0.6-0.8 s of a 1 mm head's CLI here
    (0.5 s of a 1 mm ``apply``'s 3.7 s), and nothing is left to do (outputs are written atomically and
    closed; the idle worker threads hold nothing).  Errors and the other commands end as usual.
    Before anything else, glibc is told to keep freed memory for reuse (:mod:`unireg.cli.allocator`)."""
    keep_freed_memory()
    _STATE["finished"] = False  # this run's own: an earlier in-process run (tests) must not end this one early
    try:
        app()
    except SystemExit as e:
        if not _STATE.get("finished"):
            raise
        code = e.code
    else:
        if not _STATE.get("finished"):
            return
        code = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`unireg register ... | head`): nothing left to say
            pass
    if not isinstance(code, int):  # as the interpreter does: None is 0, a message goes to stderr, status 1
        if code is not None:
            print(code, file=sys.stderr, flush=True)
        code = 0 if code is None else 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
