"""``unireg train``: every field of :class:`unireg.training.config.TrainConfig` is also a flag."""

from __future__ import annotations

import typer

# One line per TrainConfig field, shown by `unireg train --help` next to the flag (the parser itself
# lives in unireg.training.config; only its help strings are filled in here).
TRAIN_HELP = {
    "ndim": "2 or 3: dimensionality of the model",
    "extractor": "frozen feature extractor the UNet reads (mind, local, imagenet, raw)",
    "similarity": "training loss: feature (MSE of the frozen features), ncc (raw intensities) or mind",
    "steps": "number of optimiser steps",
    "batch_size": "pairs per optimiser step",
    "lr": "Adam learning rate",
    "spacing": "working-grid spacing in mm (default: the model's, 2 mm in 3-D, 1 mm in 2-D)",
    "crop": "training crop size in voxels, one number per axis",
    "max_disp_mm": "largest synthetic displacement, mm",
    "contrasts": "moving contrasts synthesised from the T1 (t1, t2, pd, flair, ct)",
    "bias": "strength of the random bias field",
    "noise": "standard deviation of the added noise (intensities in [0, 1])",
    "rot_deg": "largest random rotation, degrees",
    "scale": "largest random relative scaling",
    "trans_mm": "largest random translation, mm",
    "dice_weight": "weight of the label Dice term",
    "lambda_min": "smallest regularisation weight sampled (FiLM conditioning)",
    "lambda_max": "largest regularisation weight sampled",
    "enc": "UNet encoder channels per level",
    "dec": "UNet decoder channels per level",
    "seed": "random seed",
    "out": "checkpoint path written",
    "checkpoint_every": "write the checkpoint every N steps",
    "log_every": "print the losses every N steps",
    "resume": "continue from the checkpoint at --out",
    "threads": "torch CPU threads",
    "device": "cpu or cuda",
    "val_pairs": "held-out pairs for the validation Dice",
    "time_limit_min": "stop (and checkpoint) after this many minutes",
}


def train_help() -> str:
    """The trainer's argparse help with a description and the default for every flag."""
    import dataclasses

    from ..training.config import TrainConfig, _parser

    p = _parser()
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(TrainConfig)}
    for a in p._actions:
        if a.dest in defaults:
            text = TRAIN_HELP.get(a.dest, a.dest.replace("_", " "))
            d = defaults[a.dest]
            if isinstance(d, list):
                d = " ".join(map(str, d))
            a.help = f"{text} (default: {d})".replace("%", "%%")
    return p.format_help()


def add_to(app: typer.Typer, guarded) -> None:
    @app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    @guarded
    def train(ctx: typer.Context):
        """Train the deformation UNet on a frozen extractor (MNI T1, synthetic deformations).

        Run `unireg train --help` for every flag; `--config CONFIG.yaml` loads a YAML file first.
        Under torchrun use `torchrun --nproc_per_node N -m unireg.training ...`.
        """
        args = list(ctx.args)
        if "-h" in args or "--help" in args:
            typer.echo(train_help())
            raise typer.Exit(0)
        # lazy: the trainer imports torch (~2 s), which `unireg --help` must not pay
        from ..training.config import parse_config
        from ..training.trainer import train as run

        cfg = parse_config(args)
        path = run(cfg)
        typer.echo(f"checkpoint: {path}")
