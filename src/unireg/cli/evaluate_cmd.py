"""``unireg evaluate``: accuracy, regularity and cost figures of registered result folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def add_to(app: typer.Typer, guarded) -> None:
    @app.command()
    @guarded
    def evaluate(
        results: Path = typer.Argument(..., help="A result folder (from `unireg register`) or a folder of them."),
        fixed_labels: Optional[Path] = typer.Option(None, "--fixed-labels", help="Label map on the fixed grid (default: the one in report.json)."),
        moving_labels: Optional[Path] = typer.Option(None, "--moving-labels", help="Moving label map, warped through warp.nii.gz where a folder has no warped_labels."),
        true_warp: Optional[Path] = typer.Option(None, "--true-warp", help="Ground-truth ITK displacement field: EPE against warp.nii.gz."),
        fixed_points: Optional[Path] = typer.Option(None, "--fixed-points", help="Fixed landmarks CSV (x,y[,z], RAS mm)."),
        moving_points: Optional[Path] = typer.Option(None, "--moving-points", help="Moving landmarks CSV, same rows."),
        label: Optional[List[int]] = typer.Option(None, "--label", help="Score only these labels (repeatable)."),
        jacobian: str = typer.Option("auto", "--jacobian", help="auto | file (jacobian.nii.gz) | warp (recompute from warp.nii.gz)."),
        mask: Optional[str] = typer.Option(
            None, "--mask", metavar="FILE|all",
            help="Where EPE is scored: a mask on the fixed grid (non-zero = scored) or 'all'.  Default: inside the "
                 "object (the fixed labels, else the fixed image's foreground); the background, where every "
                 "method extrapolates, would swamp the figure."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where metrics.json/metrics.csv go (default: RESULTS)."),
    ):
        """Dice, HD95, EPE (before and after, inside the object), TRE, folding, SDlogJ, runtime and peak
        memory; writes metrics.json and metrics.csv."""
        # lazy: evaluation imports torch and scipy (~2.5 s), which `unireg --help` must not pay
        from ..evaluation.evaluate import evaluate_path, format_table, write_metrics

        rows = evaluate_path(
            results, fixed_labels=fixed_labels, moving_labels=moving_labels, true_warp=true_warp,
            fixed_points=fixed_points, moving_points=moving_points, labels=label or None, jacobian=jacobian,
            epe_mask=mask or "auto",
        )
        typer.echo(format_table(rows))
        paths = write_metrics(rows, out if out is not None else results)
        typer.echo(f"wrote {paths['json']} and {paths['csv']}")
