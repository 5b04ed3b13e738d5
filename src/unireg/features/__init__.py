"""Frozen feature extractors, created by name (see :func:`create_extractor`)."""

from .base import FeatureExtractor, freeze
from .registry import available_extractors, create_extractor, register_extractor
from . import local  # noqa: F401  (registers "local")

__all__ = ["FeatureExtractor", "freeze", "available_extractors", "create_extractor", "register_extractor"]
