"""Command-line interface (typer).  Heavy imports happen inside the commands for a fast start."""
