"""Options shared by `unireg register` and `unireg batch` (one definition each)."""

from typing import Optional

import typer

MODEL = typer.Option(None, "--model", help="Checkpoint path (default: shipped model).")
EXTRACTOR = typer.Option(None, "--extractor", help="Feature extractor (mind, local, imagenet).")
NO_AFFINE = typer.Option(False, "--no-affine", help="Skip the affine pre-alignment.")
REFINE = typer.Option(None, "--refine", help="Instance-optimisation iterations (default: the model's).")
SMOOTHNESS = typer.Option(1.0, "--smoothness", help="Regularisation weight in [0.1, 10].")
SEED = typer.Option(0, "--seed")

__all__ = ["Optional", "MODEL", "EXTRACTOR", "NO_AFFINE", "REFINE", "SMOOTHNESS", "SEED"]
