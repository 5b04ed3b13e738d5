"""Base class and shared helpers of UniReg's frozen feature extractors.

An extractor maps an image batch ``(B, 1, *spatial)`` to features ``(B, C, *spatial)`` on the same
grid.  Extractors are *frozen by construction*: their parameters never require gradients and they
never leave eval mode, but gradients still flow to the input image (instance optimisation pushes
the warped moving image through the extractor).
"""

from __future__ import annotations

import torch
from torch import nn

from ..intensity import percentile_rescale  # the one intensity-normalisation routine (re-exported)

__all__ = ["FeatureExtractor", "freeze", "percentile_rescale", "instance_normalize"]


def freeze(module: nn.Module) -> nn.Module:
    """Make ``module`` frozen: no parameter requires grad, and it is put in eval mode."""
    module.requires_grad_(False)
    nn.Module.train(module, False)  # bypass an overridden train() that may refuse the call
    return module


class FeatureExtractor(nn.Module):
    """A frozen, deterministic, dimension-specific feature extractor.

    Attributes
    ----------
    name : str
        Registry name (``"mind"``, ``"imagenet"``, ``"local"``).
    ndim : int
        Number of spatial dimensions the extractor accepts (2 or 3).
    out_channels : int
        Number of output feature channels ``C``.

    Subclasses build their layers, then call :func:`freeze` as the last step of ``__init__``.
    """

    name: str = "base"
    ndim: int
    out_channels: int

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen by construction: BatchNorm statistics etc. must never change, whatever a
        # surrounding model's .train() asks for.
        return super().train(False)

    def check_input(self, image: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``image`` is ``(B, 1, *spatial)`` with ``ndim`` spatial axes."""
        if image.dim() != self.ndim + 2 or image.shape[1] != 1:
            expected = "(B, 1, H, W)" if self.ndim == 2 else "(B, 1, D, H, W)"
            raise ValueError(
                f"{type(self).__name__} ({self.ndim}-D) expects an image of shape {expected}, "
                f"got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point image, got {image.dtype}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(B, 1, *spatial)`` -> ``(B, out_channels, *spatial)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, ndim={self.ndim}, out_channels={self.out_channels}"


def instance_normalize(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-item, per-channel zero mean / unit variance over the spatial axes of ``(B, C, *spatial)``."""
    dims = tuple(range(2, features.dim()))
    mean = features.mean(dim=dims, keepdim=True)
    var = features.var(dim=dims, keepdim=True, unbiased=False)
    return (features - mean) / torch.sqrt(var + eps)
