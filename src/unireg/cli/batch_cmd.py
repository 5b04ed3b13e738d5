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
from . import options


def add_to(app: typer.Typer, guarded) -> None:
    @app.command()
    @guarded
    def batch(
        manifest: Path = typer.Argument(..., help="CSV with columns fixed,moving[,labels,fixed_labels,id]; "
                                                  "relative paths are relative to the manifest's folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: one sub-folder per pair, summary.csv, index.html."),
        model: Optional[str] = options.MODEL,
        extractor: Optional[str] = options.EXTRACTOR,
        no_affine: bool = options.NO_AFFINE,
        refine: Optional[int] = options.REFINE,
        smoothness: float = options.SMOOTHNESS,
        device: str = typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: cuda:<LOCAL_RANK>)."),
        seed: int = options.SEED,
        no_qc: bool = typer.Option(False, "--no-qc", help="Skip qc.png and report.html per pair."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ):
        """Register every pair of MANIFEST into OUT, skipping pairs already done (DIR/<id>/.done).

        One bad pair is recorded in summary.csv with its error and does not stop the others; the
        exit status is 0 even then (read summary.csv).  For several processes or nodes run the same
        arguments under torchrun: `torchrun --nproc_per_node K -m unireg.batch_main MANIFEST --out DIR`.
        """
        # lazy: unireg.batch imports torch (~2 s), which `unireg --help` must not pay
        from ..batch import BatchOptions, dist_env, run_batch, set_threads_for_local_world

        if not 0.1 <= float(smoothness) <= 10.0:
            raise UniRegError(f"smoothness must be within [0.1, 10], got {smoothness}")
        if refine is not None and refine < 0:
            raise UniRegError(f"--refine must be >= 0, got {refine}")
        rank, world, local_world = dist_env()
        if world > 1 and not os.environ.get("UNIREG_THREADS"):
            set_threads_for_local_world(local_world)
        if device == "cuda" and world > 1:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        opts = BatchOptions(model=model, extractor=extractor, refine=refine, smoothness=smoothness,
                            affine=not no_affine, device=device, seed=seed, qc=not no_qc)
        rows = run_batch(manifest, out, opts, progress=not no_progress)
        n_bad = sum(r["status"] != "ok" for r in rows)
        who = f"rank {rank}/{world}: " if world > 1 else ""
        typer.echo(f"{who}{len(rows) - n_bad} ok, {n_bad} failed"
                   + (f"; summary in {out / 'summary.csv'}" if rank == 0 else ""), err=True)
