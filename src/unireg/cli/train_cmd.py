"""``unireg train``: every field of :class:`unireg.training.config.TrainConfig` is also a flag."""

from __future__ import annotations

import typer


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
        # lazy: the trainer imports torch (~2 s), which `unireg --help` must not pay
        from ..training.config import parse_config
        from ..training.trainer import train as run

        cfg = parse_config(list(ctx.args))
        path = run(cfg)
        typer.echo(f"checkpoint: {path}")
