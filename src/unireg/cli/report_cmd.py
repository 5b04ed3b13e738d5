"""``unireg report DIR``: rebuild ``DIR/report.html`` from a ``unireg register`` output folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UniRegError


def add_to(app: typer.Typer, guarded) -> None:
    """Register the ``report`` command on ``app`` (wrapped with the CLI's error guard)."""

    @app.command("report")
    @guarded
    def report(
        out_dir: Path = typer.Argument(..., metavar="DIR", help="A `unireg register` output folder (holds report.json)."),
        max_px: int = typer.Option(256, "--max-px", help="Longer side of each embedded picture, in pixels."),
    ):
        """Rebuild DIR/report.html (self-contained visual QC page) from the files in DIR."""
        from ..reports.html import build_report  # lazy: matplotlib, scipy and torch (~3 s), not for --help

        if not out_dir.exists():
            raise UniRegError("no such folder", out_dir)
        if not out_dir.is_dir():
            raise UniRegError("not a folder; give the `unireg register --out` folder", out_dir)
        if not 32 <= max_px <= 2048:
            raise UniRegError(f"--max-px must be within [32, 2048], got {max_px}")
        dest = build_report(out_dir, max_px=max_px)
        typer.echo(str(dest))
