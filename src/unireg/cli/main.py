"""``unireg`` command line.  Every user error is one line on stderr and exit code 2 (``--debug``
shows the traceback instead)."""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import UniRegError
from . import options

# Imports of numpy, torch and the rest of the package stay inside the commands: `unireg --help`
# imports only typer and this package's light modules (measured with
# `python -X importtime -c "import unireg.cli.main"`: ~0.06 s here, versus ~2 s once torch loads).

app = typer.Typer(add_completion=False, no_args_is_help=True, help="UniReg: universal deformable image registration.")

_STATE = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
):
    _STATE["debug"] = debug
    if threads is not None:
        os.environ["UNIREG_THREADS"] = str(threads)


def _setup_threads():
    n = os.environ.get("UNIREG_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def guarded(fn):
    """Turn UniRegError (and other input errors) into one stderr line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _setup_threads()
            return fn(*args, **kwargs)
        except UniRegError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"unireg: error: {exc}", err=True)
            raise typer.Exit(2)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except MemoryError:
            if _STATE["debug"]:
                raise
            typer.echo("unireg: error: out of memory (try a coarser working grid or --device cuda)", err=True)
            raise typer.Exit(2)
        except OSError as exc:
            if _STATE["debug"]:
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"unireg: error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(2)

    return wrapper


def _print_summary(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False)
    t = Table(title=f"UniReg -> {out}", show_header=True)
    t.add_column("figure")
    t.add_column("value", justify="right")
    if "dice" in report:
        t.add_row("Dice before (mean)", f"{report['dice_before']['mean']:.4f}")
        t.add_row("Dice after (mean)", f"{report['dice']['mean']:.4f}")
    t.add_row("folded voxels %", f"{report['folded_percent']:.4f}")
    t.add_row("SDlogJ", f"{report['sdlogj']:.4f}")
    for k, v in report["runtime_s"].items():
        t.add_row(f"time {k} (s)", f"{v:.2f}")
    t.add_row("model", str(report.get("model")))
    con.print(t)
    if report.get("warning"):
        con.print(f"[yellow]note:[/yellow] {report['warning']}")


@app.command()
@guarded
def register(
    fixed: Path = typer.Argument(..., help="Fixed (reference) image."),
    moving: Path = typer.Argument(..., help="Moving image, resampled onto the fixed grid."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label map on the moving grid to warp."),
    fixed_labels: Optional[Path] = typer.Option(None, "--fixed-labels", help="Fixed label map: Dice before/after."),
    model: Optional[str] = options.MODEL,
    extractor: Optional[str] = options.EXTRACTOR,
    no_affine: bool = options.NO_AFFINE,
    refine: Optional[int] = options.REFINE,
    smoothness: float = options.SMOOTHNESS,
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = options.SEED,
    no_qc: bool = typer.Option(False, "--no-qc", help="Skip the failure score, qc.png and report.html."),
):
    """Register MOVING onto FIXED and write warped image, warps, Jacobian, report and QC."""
    from .. import api
    from ..io.atomic import check_output_dir
    from ..outputs import OUTPUT_NAMES, guard_inputs

    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    check_output_dir(out)
    try:
        # refuse an --out that would overwrite an input before the (long) registration, not after it
        guard_inputs({k: out / v for k, v in OUTPUT_NAMES.items()}, [str(p) for p in (fixed, moving, labels, fixed_labels) if p])
        result = api.register(
            fixed, moving, model=model, extractor=extractor, labels=labels, fixed_labels=fixed_labels,
            affine=not no_affine, refine=refine, smoothness=smoothness, device=device, seed=seed, qc=not no_qc,
        )
        result.save(out, qc=not no_qc, html=not no_qc)
    except (UniRegError, OSError, MemoryError):
        # a failed run leaves nothing behind: not even the --out folders it created (rmdir: only if empty)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        raise
    _print_summary(result.report, out)


@app.command()
@guarded
def apply(
    warp: Path = typer.Argument(..., help="warp.nii.gz written by `unireg register`."),
    image: Path = typer.Argument(..., help="Image or label map on the moving image's world space."),
    ref: Path = typer.Option(..., "--ref", help="Reference (fixed) image defining the output grid."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    labels: bool = typer.Option(False, "--labels", help="IMAGE is a label map (integers kept)."),
):
    """Apply a saved warp to another image or label map."""
    import numpy as np

    from .. import api
    from ..io.image import write_image
    from ..outputs import guard_inputs

    guard_inputs({"out": out}, [str(warp), str(image), str(ref)])
    res = api.apply(warp, image, ref, labels=labels)
    write_image(out, res.data, res.affine, dtype=None if labels else np.float32)
    typer.echo(str(out))


@app.command("apply-points")
@guarded
def apply_points(
    warp: Path = typer.Argument(..., help="warp.nii.gz (fixed->moving points) or inverse_warp.nii.gz (moving->fixed)."),
    points: Path = typer.Argument(..., help="CSV with columns x,y[,z] in world mm."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV."),
    lps: bool = typer.Option(False, "--lps", help="Coordinates are LPS (ITK/ANTs) instead of RAS."),
):
    """Map a CSV of world points through a warp (x + u(x))."""
    from .. import api
    from ..io.points import read_points, write_points
    from ..outputs import guard_inputs

    guard_inputs({"out": out}, [str(warp), str(points)])
    pts, table = read_points(points, lps=lps)
    mapped = api.apply_points(warp, pts)
    write_points(out, mapped, table, lps=lps)
    typer.echo(str(out))


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("unireg-demo"), "--out", "-o", help="Output folder."),
    contrast: str = typer.Option("t2", "--contrast", help="Moving contrast: t1, t2, pd, flair, ct."),
    refine: Optional[int] = typer.Option(None, "--refine"),
    smoothness: float = typer.Option(1.0, "--smoothness"),
    seed: int = options.SEED,
):
    """Register the MNI T1 against a deformed copy in another contrast; print Dice and runtime."""
    from ..data.synth import CONTRASTS
    from ..demo import run_demo
    from ..io.atomic import check_output_dir

    if contrast not in CONTRASTS:
        raise UniRegError(f"unknown contrast '{contrast}'; choose one of {', '.join(CONTRASTS)}")
    check_output_dir(out)
    rep = run_demo(out, contrast=contrast, refine=refine, smoothness=smoothness, seed=seed)
    _print_summary(rep, out)
    typer.echo(f"outputs in {out}/ (qc.png, report.html, warped.nii.gz, warp.nii.gz, ...)")


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


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
