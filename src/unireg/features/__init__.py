"""Frozen feature extractors, created by name (see :func:`create_extractor`)::

    from unireg.features import create_extractor, available_extractors
    available_extractors()                   # ['imagenet', 'local', 'mind']
    mind = create_extractor("mind", ndim=3)  # MIND-SSC, 12 channels
    feats = mind(image)                      # (B, 1, D, H, W) -> (B, 12, D, H, W)
"""

from .base import FeatureExtractor, freeze, instance_normalize, percentile_rescale
from .registry import available_extractors, create_extractor, register_extractor

# Importing the modules registers their extractors.
from . import imagenet, local, mind, raw  # noqa: E402,F401
from .imagenet import ImageNetResNet18Stem
from .local import LocalEncoder
from .mind import MIND, mind_ssc

__all__ = [
    "FeatureExtractor",
    "freeze",
    "instance_normalize",
    "percentile_rescale",
    "available_extractors",
    "create_extractor",
    "register_extractor",
    "ImageNetResNet18Stem",
    "LocalEncoder",
    "MIND",
    "mind_ssc",
]
