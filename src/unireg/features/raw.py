"""``raw``: the image itself as a one-channel "feature" -- the conventional end-to-end CNN baseline
(VoxelMorph-style: raw intensities in).  Used by the benchmark and the domain-shift analysis to show
what happens without frozen local features."""

from __future__ import annotations

import torch

from .base import FeatureExtractor, freeze
from .registry import register_extractor


@register_extractor("raw")
class RawIntensity(FeatureExtractor):
    name = "raw"

    def __init__(self, ndim: int = 3):
        super().__init__()
        self.ndim = ndim
        self.out_channels = 1
        freeze(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.check_input(image)
        return image
