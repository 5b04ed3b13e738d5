"""Training configuration: one dataclass, loadable from YAML, every field also a command-line flag."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UniRegError

__all__ = ["TrainConfig", "parse_config"]


@dataclass
class TrainConfig:
    """Unsupervised training of the deformation UNet on top of a frozen extractor (one dataset: MNI T1)."""

    ndim: int = 3
    extractor: str = "mind"
    similarity: str = "feature"  # feature (MSE of the frozen features) | ncc (raw intensities) | mind
    steps: int = 2000
    batch_size: int = 1
    lr: float = 1e-3
    spacing: float | None = None  # mm; default: the model's working spacing (3-D 2 mm, 2-D 1 mm)
    crop: list[int] = field(default_factory=lambda: [64, 64, 64])
    max_disp_mm: float = 8.0
    contrasts: list[str] = field(default_factory=lambda: ["t1"])  # one dataset, one contrast
    bias: float = 0.2
    noise: float = 0.02
    rot_deg: float = 4.0
    scale: float = 0.04
    trans_mm: float = 3.0
    dice_weight: float = 0.5
    lambda_min: float = 0.1
    lambda_max: float = 10.0
    enc: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    dec: list[int] = field(default_factory=lambda: [32, 32, 32])
    # deformation network: "unet" (enc/dec above) or "corr" (cost volumes, models/corrnet.py)
    arch: str = "corr"
    width: list[int] = field(default_factory=lambda: [32, 32, 32])
    radius: list[int] = field(default_factory=lambda: [2, 2, 1])
    convs: int = 2
    out_scale: float = 1.0  # CorrNet head -> voxels; safe at 1.0 only with the warm-up below
    warmup_steps: int = 15  # linear learning-rate warm-up
    # training pairs: "torch" (batched, on the training device, training/synth_torch.py) or
    # "legacy" (per-pair CPU PairSynthesizer with independent affine jitter of both images)
    synth: str = "torch"
    rel_rot_deg: float = 2.0
    rel_scale: float = 0.02
    rel_shear: float = 0.02
    rel_trans_mm: float = 2.0
    subj_rot_deg: float = 8.0
    subj_scale: float = 0.06
    gamma: float = 0.25
    invert: float = 0.0
    label_stride: int = 2
    seed: int = 0
    out: str = "runs/unireg_3d.pt"
    checkpoint_every: int = 100
    log_every: int = 10
    resume: bool = False
    threads: int | None = None
    device: str = "cpu"
    val_pairs: int = 4
    time_limit_min: float | None = None  # stop (and checkpoint) after this many minutes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unireg train", description=TrainConfig.__doc__)
    p.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",) or f.type is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif "list[int]" in str(f.type):
            p.add_argument(flag, dest=f.name, type=int, nargs="+", default=None)
        elif "list[str]" in str(f.type):
            p.add_argument(flag, dest=f.name, type=str, nargs="+", default=None)
        elif "int" in str(f.type):
            p.add_argument(flag, dest=f.name, type=int, default=None)
        elif "float" in str(f.type):
            p.add_argument(flag, dest=f.name, type=float, default=None)
        else:
            p.add_argument(flag, dest=f.name, type=str, default=None)
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < YAML ``--config`` < flags."""
    args = _parser().parse_args(argv)
    values: dict = {}
    if args.config is not None:
        try:
            values.update(yaml.safe_load(Path(args.config).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise UniRegError(f"cannot read training config ({type(exc).__name__})", args.config) from None
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(values) - names
        if unknown:
            raise UniRegError(f"unknown config field(s): {', '.join(sorted(unknown))}", args.config)
    for k, v in vars(args).items():
        if k != "config" and v is not None:
            values[k] = v
    cfg = TrainConfig(**values)
    if cfg.ndim not in (2, 3):
        raise UniRegError(f"ndim must be 2 or 3, got {cfg.ndim}")
    if cfg.arch not in ("unet", "corr"):
        raise UniRegError(f"arch must be unet or corr, got {cfg.arch!r}")
    if cfg.synth not in ("torch", "legacy"):
        raise UniRegError(f"synth must be torch or legacy, got {cfg.synth!r}")
    if len(cfg.crop) != cfg.ndim:
        cfg.crop = (list(cfg.crop) * 3)[: cfg.ndim] if cfg.crop else [64] * cfg.ndim
    return cfg
