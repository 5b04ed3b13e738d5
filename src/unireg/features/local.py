"""UniReg's own small local encoder ("local"): three convolutions, receptive field 7 voxels.

Pre-trained self-supervised on the MNI ICBM152 T1 under random intensity remappings
(:mod:`unireg.training.pretrain_local`) so that a voxel's feature vector depends on its local
anatomy and not on the contrast.  Weights ship as ``unireg/weights/local_{2,3}d.pt``.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..errors import UniRegError
from .base import FeatureExtractor, freeze, instance_normalize, percentile_rescale
from .registry import register_extractor

__all__ = ["LocalEncoder", "load_local_encoder", "shipped_weights_path"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class LocalEncoder(FeatureExtractor):
    """Small dimension-generic conv encoder of local appearance.

    ``(B, 1, *spatial)`` -> percentile rescaling (1st..99th -> [0, 1]) -> ``num_layers`` convs with
    ``kernel_size`` kernels, replicate padding and LeakyReLU between them -> per-channel instance
    normalisation -> ``(B, channels, *spatial)``.  Receptive field ``1 + num_layers*(kernel_size-1)``
    voxels (7 with the defaults).

    Parameters
    ----------
    ndim : int
        2 or 3.
    channels : int
        Output channels (and hidden width).
    num_layers : int
        Number of convolutions.
    kernel_size : int
        Odd kernel size.
    negative_slope : float
        LeakyReLU slope.
    trainable : bool
        ``False`` (default) freezes the module as every extractor is; the pre-training script
        builds it with ``True``.  Not part of the saved config.
    """

    name = "local"

    def __init__(
        self,
        ndim: int = 3,
        channels: int = 16,
        num_layers: int = 3,
        kernel_size: int = 3,
        negative_slope: float = 0.2,
        trainable: bool = False,
    ):
        super().__init__()
        if ndim not in _CONV:
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.ndim = ndim
        self.out_channels = channels
        self.config = dict(
            ndim=ndim, channels=channels, num_layers=num_layers, kernel_size=kernel_size,
            negative_slope=negative_slope,
        )
        self._trainable = trainable
        conv = _CONV[ndim]
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(num_layers):
            layers.append(conv(c_in, channels, kernel_size, padding=kernel_size // 2, padding_mode="replicate"))
            if i < num_layers - 1:
                layers.append(nn.LeakyReLU(negative_slope))
            c_in = channels
        self.body = nn.Sequential(*layers)
        if not trainable:
            freeze(self)

    @property
    def receptive_field(self) -> int:
        return 1 + self.config["num_layers"] * (self.config["kernel_size"] - 1)

    def train(self, mode: bool = True) -> "LocalEncoder":
        if self._trainable:
            return nn.Module.train(self, mode)
        return super().train(mode)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` -> ``(B, channels, *spatial)``, per-channel zero mean, unit variance."""
        self.check_input(image)
        x = percentile_rescale(image)
        return instance_normalize(self.body(x))

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, **meta) -> Path:
        """Write ``{"config", "state_dict"[, "meta"]}`` to ``path`` atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {"config": dict(self.config), "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}
        if meta:
            ckpt["meta"] = meta
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(ckpt, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a shipped weight file must be readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, trainable: bool = False) -> "LocalEncoder":
        """Build an encoder from a checkpoint written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise UniRegError("local encoder checkpoint not found", path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt / not a torch file
            raise UniRegError(f"cannot read local encoder checkpoint ({exc.__class__.__name__}: {exc})", path) from None
        if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
            raise UniRegError("not a local encoder checkpoint (expected keys 'config' and 'state_dict')", path)
        model = cls(**ckpt["config"], trainable=True)
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        if missing or unexpected:
            raise UniRegError(f"checkpoint does not match the encoder: missing {missing}, unexpected {unexpected}", path)
        if not trainable:
            model._trainable = False
            freeze(model)
        return model


def shipped_weights_path(ndim: int) -> Path | None:
    """Path of the packaged ``weights/local_{ndim}d.pt`` or ``None`` if it is not installed."""
    ref = resources.files("unireg").joinpath("weights", f"local_{ndim}d.pt")
    try:
        if ref.is_file():
            return Path(str(ref))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None


@register_extractor("local")
def load_local_encoder(ndim: int, weights: str | os.PathLike | None = None) -> LocalEncoder:
    """The frozen pre-trained local encoder for ``ndim``-D images.

    ``weights`` (a checkpoint path) takes precedence; otherwise the packaged
    ``unireg/weights/local_{ndim}d.pt`` is used.  Neither -> :class:`UniRegError`.
    """
    if weights is not None:
        path = Path(weights)
    else:
        path = shipped_weights_path(ndim)
        if path is None:
            raise UniRegError(
                f"the local encoder weights are not installed (unireg/weights/local_{ndim}d.pt is missing); "
                f"train them with `python -m unireg.training.pretrain_local --ndim {ndim} --out local_{ndim}d.pt` "
                "and pass weights=PATH"
            )
    model = LocalEncoder.load(path)
    if model.ndim != ndim:
        raise UniRegError(f"checkpoint is a {model.ndim}-D local encoder, {ndim}-D was requested", path)
    return model
