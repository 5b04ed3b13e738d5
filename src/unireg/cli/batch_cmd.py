"""``unireg batch``: register every pair of a CSV manifest (resumable; torchrun-aware).

Discovered by :func:`unireg.cli.main._register_optional_commands`.  The logic lives in
:mod:`unireg.batch`; this module only maps options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import UniRegError
from ..verdict import EXIT_FLAGGED, EXIT_INTERRUPTED
from . import options


def add_to(app: typer.Typer, guarded) -> None:
    @app.command()
    @guarded
    def batch(
        manifest: Path = typer.Argument(..., help="CSV with columns fixed,moving[,labels,fixed_labels,id,fixed_mask,"
                                                  "moving_mask,initial_transform]; "
                                                  "relative paths are relative to the manifest's folder."),
        out: Path = typer.Option(..., "--out", "-o",
                                 help="Output folder: one sub-folder per pair, summary.csv, index.html."),
        model: Optional[str] = options.MODEL,
        extractor: Optional[str] = options.EXTRACTOR,
        no_affine: bool = options.NO_AFFINE,
        transform: str = options.TRANSFORM,
        refine: Optional[int] = options.REFINE,
        smoothness: float = options.SMOOTHNESS,
        device: str = typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: cuda:<LOCAL_RANK>)."),
        seed: int = options.SEED,
        no_qc: bool = typer.Option(False, "--no-qc", help="Skip qc.png and report.html per pair."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        extractor_weights: Optional[Path] = options.EXTRACTOR_WEIGHTS,
        fmt: Optional[str] = options.FORMAT,
        outputs: Optional[str] = options.OUTPUTS,
        allow_flagged: bool = options.ALLOW_FLAGGED,
    ):
        """Register every pair of MANIFEST into OUT, skipping pairs already done (DIR/<id>/.done).

        One bad pair is recorded in summary.csv (status, error, qc_score, qc_flag, verdict, reason) and
        does not stop the others.  Exit status 3 when any pair failed or was flagged (--allow-flagged:
        flagged pairs alone keep 0), 0 when all are ok.  For several processes or nodes run the same
        arguments under torchrun: `torchrun --nproc_per_node K -m unireg.batch_main MANIFEST --out DIR`.
        """
        # lazy: unireg.batch imports torch (~2 s), which `unireg --help` must not pay
        from ..batch import BatchOptions, dist_env, run_batch, set_threads_for_local_world

        if not 0.1 <= float(smoothness) <= 10.0:
            raise UniRegError(f"smoothness must be within [0.1, 10], got {smoothness}")
        if refine is not None and refine < 0:
            raise UniRegError(f"--refine must be >= 0, got {refine}")
        from ..stages.state import check_transform

        check_transform(transform, not no_affine)
        rank, world, local_world = dist_env()
        if world > 1 and not os.environ.get("UNIREG_THREADS"):
            set_threads_for_local_world(local_world)
        if device == "cuda" and world > 1:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        if fmt is not None:
            from ..outputs import image_suffix

            image_suffix(fmt)  # an unknown --format is a bad input before any pair runs
        from ..outputs import parse_outputs

        parse_outputs(outputs)
        opts = BatchOptions(model=model, extractor=extractor, refine=refine, smoothness=smoothness,
                            affine=not no_affine, device=device, seed=seed, qc=not no_qc,
                            extractor_weights=None if extractor_weights is None else str(extractor_weights.resolve()),
                            fmt=fmt, outputs=outputs, transform=transform)
        seen: list[dict] = []
        who = f"rank {rank}/{world}: " if world > 1 else ""
        existed = out.exists()
        try:
            rows = run_batch(manifest, out, opts, progress=not no_progress, on_pair=seen.append)
        except KeyboardInterrupt:
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            typer.echo(f"unireg: {who}interrupted after {len(seen)} pair(s); finished pairs are kept in {out} "
                       "(rerun the same command to resume), the pair in progress was removed", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        n_failed = sum(r.get("status") != "ok" for r in rows)
        flagged = [r["id"] for r in rows if r.get("status") == "ok" and str(r.get("qc_flag")).lower() == "true"]
        failed = [r["id"] for r in rows if r.get("status") != "ok"]
        n_ok = len(rows) - n_failed - len(flagged)
        typer.echo(f"{who}{n_ok} ok, {len(flagged)} flagged as failed, {n_failed} failed with an error"
                   + (f" (flagged: {', '.join(flagged[:10])}{' ...' if len(flagged) > 10 else ''})" if flagged else "")
                   + (f" (errors: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''})" if failed else "")
                   + (f"; summary in {out / 'summary.csv'}" if rank == 0 else ""), err=True)
        if n_failed or (flagged and not allow_flagged):
            raise typer.Exit(EXIT_FLAGGED)
