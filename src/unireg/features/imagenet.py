"""Early stage of an ImageNet ResNet-18 as a frozen local feature extractor ("imagenet").

``conv1`` (7x7, 64 ch) + ``bn1`` + ReLU + ``layer1`` (two BasicBlocks, 64 ch), written in plain
torch with exactly torchvision's state-dict key names so that a standard torchvision ``resnet18``
state dict loads directly (``layer2``..``fc`` are ignored).  Unlike torchvision, ``conv1`` has
stride 1 and there is no max-pool: the features stay at the input resolution (receptive field 15
pixels), which is what registration needs.

Weights are never downloaded.  Get the file once on a machine with internet access, e.g.::

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth')"

(or download https://download.pytorch.org/models/resnet18-f37072fd.pth) and pass ``weights=PATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UniRegError
from .base import FeatureExtractor, freeze, instance_normalize, percentile_rescale
from .registry import register_extractor

__all__ = ["BasicBlock", "ImageNetResNet18Stem", "load_torchvision_state_dict", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    "the 'imagenet' extractor needs a torchvision ResNet-18 state dict given as weights=PATH (nothing is "
    "downloaded); on a machine with internet run: python -c \"import torch, torchvision; "
    "torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth')\" "
    "(or fetch https://download.pytorch.org/models/resnet18-f37072fd.pth) and copy the file here"
)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock without downsampling (keys ``conv1``, ``bn1``, ``conv2``, ``bn2``)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def load_torchvision_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a (torchvision) state dict from a local file; accepts ``{"state_dict": ...}`` wrappers
    and ``module.`` prefixes (DataParallel).  Raises :class:`UniRegError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UniRegError(f"ResNet-18 weights file not found; {_HOW_TO_GET}", path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UniRegError(f"cannot read ResNet-18 weights ({exc.__class__.__name__}: {exc})".split("\n")[0], path) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise UniRegError("not a state dict", path)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


@register_extractor("imagenet")
class ImageNetResNet18Stem(FeatureExtractor):
    """Frozen ResNet-18 stem + ``layer1`` at full resolution: ``(B, 1, *spatial)`` -> ``(B, C, *spatial)``.

    Grey input is rescaled per item (1st..99th percentile -> [0, 1], clipped), replicated to RGB
    and normalised with the ImageNet mean/std.  3-D volumes ``(B, 1, D, H, W)`` go through the 2-D
    network slice by slice along the last axis (slices batched ``slice_batch`` at a time).  The
    output is instance-normalised per channel.

    Parameters
    ----------
    ndim : int
        2 or 3.
    weights : path
        Local file with a torchvision ``resnet18`` state dict (required; never downloaded).
    channels : int or None
        Keep only the first ``channels`` of the 64 ``layer1`` channels (default: all 64).
    slice_batch : int
        Number of 2-D slices per network call for 3-D input (bounds peak memory).
    """

    name = "imagenet"

    def __init__(
        self,
        ndim: int = 2,
        weights: str | os.PathLike | None = None,
        channels: int | None = None,
        slice_batch: int = 32,
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if channels is not None and not 1 <= int(channels) <= 64:
            raise UniRegError(f"channels must be between 1 and 64, got {channels}")
        if weights is None:
            raise UniRegError(_HOW_TO_GET)
        self.ndim = ndim
        self.channels = None if channels is None else int(channels)
        self.out_channels = 64 if channels is None else int(channels)
        self.slice_batch = max(1, int(slice_batch))
        self.conv1 = nn.Conv2d(3, 64, 7, stride=1, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = nn.Sequential(BasicBlock(64), BasicBlock(64))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._load(weights)
        freeze(self)

    def _load(self, weights: str | os.PathLike) -> None:
        sd = load_torchvision_state_dict(weights)
        own = self.state_dict()
        # Old torchvision files (resnet18-5c106cde.pth) have no BatchNorm num_batches_tracked.
        required = [k for k in own if not k.endswith("num_batches_tracked")]
        missing = [k for k in required if k not in sd]
        if missing:
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            raise UniRegError(
                f"not a torchvision ResNet-18 state dict: missing {', '.join(missing[:5])}{more}", weights
            )
        for k in own:
            if k in sd and tuple(sd[k].shape) != tuple(own[k].shape):
                raise UniRegError(
                    f"not a torchvision ResNet-18 state dict: {k} has shape {tuple(sd[k].shape)}, "
                    f"expected {tuple(own[k].shape)}",
                    weights,
                )
        self.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)

    def _features_2d(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` in [0, 1] -> ``(N, C, H, W)`` (before instance normalisation)."""
        rgb = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        f = self.layer1(self.relu(self.bn1(self.conv1(rgb))))
        return f if self.channels is None else f[:, : self.channels]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` -> ``(B, out_channels, *spatial)``, per-channel standardised."""
        self.check_input(image)
        x = percentile_rescale(image)  # per volume, so every slice of a 3-D image shares the mapping
        if self.ndim == 2:
            return instance_normalize(self._features_2d(x))
        b, _, d, h, w = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * w, 1, d, h)
        f = torch.cat([self._features_2d(c) for c in slices.split(self.slice_batch)], dim=0)
        f = f.reshape(b, w, -1, d, h).permute(0, 2, 3, 4, 1)
        return instance_normalize(f)
