"""Options shared by `unireg register` and `unireg batch` (one definition each)."""

from typing import Optional

import typer

MODEL = typer.Option(None, "--model", help="Checkpoint path (default: shipped model).")
EXTRACTOR = typer.Option(
    None,
    "--extractor",
    help="Feature extractor: mind (default, the shipped model), local, imagenet (needs --extractor-weights) or raw. "
    "Without a trained model for it a warning is printed and the refinement does the registration.",
)
EXTRACTOR_WEIGHTS = typer.Option(
    None,
    "--extractor-weights",
    metavar="PATH",
    help="Local weights file for the extractor (imagenet: a torchvision ResNet-18 state dict; nothing is downloaded).",
)
NO_AFFINE = typer.Option(
    False, "--no-affine", help="Skip the affine pre-alignment (--initial-transform, if given, is then the affine)."
)
INITIAL_TRANSFORM = typer.Option(
    None,
    "--initial-transform",
    metavar="FILE",
    help="ITK/ANTs affine (.mat/.txt, fixed->moving as antsRegistration writes it) to start the affine from.",
)
FIXED_MASK = typer.Option(
    None,
    "--fixed-mask",
    metavar="FILE",
    help="Mask of the fixed image (nonzero = use; any grid): similarity measured only there.",
)
MOVING_MASK = typer.Option(
    None,
    "--moving-mask",
    metavar="FILE",
    help="Mask of the moving image (nonzero = use; any grid): similarity measured only there.",
)
REFINE = typer.Option(
    None,
    "--refine",
    min=0,
    help="Instance-optimisation iterations per refinement level (default: the multi-resolution "
    "schedule; 0: the network alone).",
)
TRANSFORM = typer.Option(
    "deformable", "--transform", metavar="rigid|affine|deformable",
    help="What to register: rigid (rotation + translation) or affine alone, as antsRegistrationSyN.sh -t r / -t a, "
    "or deformable (default: affine, then the deformation).",
)
FAST = typer.Option(
    False, "--fast", help="Network, then coarse and native refinement only (no working-grid level; fewer iterations)."
)
KEEP_ALL_STAGES = typer.Option(
    False, "--keep-all-stages", help="Keep every stage even if it worsens the similarity (turns do-no-harm off)."
)
NO_DENOISE = typer.Option(
    False, "--no-denoise",
    help="Do not smooth a noisy image before registering (default: an image whose estimated SNR is low is smoothed "
         "for the comparisons; the outputs warp the images as given).",
)
SMOOTHNESS = typer.Option(1.0, "--smoothness", help="Regularisation weight in [0.1, 10].")
SEED = typer.Option(0, "--seed", help="Random seed.")
DEVICE = typer.Option("cpu", "--device", help="cpu or cuda[:N] (where the tensors live).")
ALLOW_FLAGGED = typer.Option(
    False, "--allow-flagged", help="Exit 0 even when the registration is flagged as failed (default: exit 3)."
)
OUTPUTS = typer.Option(
    None, "--outputs", metavar="LIST",
    help="Write only these (comma list): warped, warp, inverse, ants (affine.mat + deformable warps), jacobian, "
         "labels, qc, html; default all. report.json is always written; what is not asked for is not computed.")
FORMAT = typer.Option(
    None,
    "--format",
    metavar="nii.gz|mha|nrrd",
    help="Image output format (default: the fixed image's; DICOM and PNG inputs give nii.gz).",
)

__all__ = [
    "Optional",
    "MODEL",
    "EXTRACTOR",
    "EXTRACTOR_WEIGHTS",
    "NO_AFFINE",
    "TRANSFORM",
    "INITIAL_TRANSFORM",
    "FIXED_MASK",
    "MOVING_MASK",
    "REFINE",
    "FAST",
    "KEEP_ALL_STAGES",
    "NO_DENOISE",
    "SMOOTHNESS",
    "SEED",
    "DEVICE",
    "ALLOW_FLAGGED",
    "FORMAT",
    "OUTPUTS",
]
