"""Feature extractors by name, in the spirit of ``timm.create_model``.

>>> from unireg.features import create_extractor
>>> mind = create_extractor("mind", ndim=3, dilation=2)
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import UniRegError
from .base import FeatureExtractor

__all__ = ["register_extractor", "create_extractor", "available_extractors"]

_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}

F = TypeVar("F", bound=Callable[..., FeatureExtractor])


def register_extractor(name: str) -> Callable[[F], F]:
    """Class/function decorator registering a factory ``factory(ndim, **kwargs) -> FeatureExtractor``.

    Registering the same name twice with a different factory is a programming error (``ValueError``).
    """

    def decorator(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            if getattr(existing, "__qualname__", None) != getattr(factory, "__qualname__", None):
                raise ValueError(f"feature extractor {name!r} is already registered by {existing!r}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_extractors() -> list[str]:
    """Sorted names accepted by :func:`create_extractor`."""
    return sorted(_REGISTRY)


def create_extractor(name: str, ndim: int, **kwargs) -> FeatureExtractor:
    """Build the frozen extractor ``name`` for ``ndim``-D images (2 or 3).

    Keyword arguments go to the extractor (e.g. ``dilation=`` for ``"mind"``, ``weights=`` for
    ``"imagenet"``/``"local"``).  Raises :class:`~unireg.errors.UniRegError` for an unknown name or
    an unsupported ``ndim``.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UniRegError(
            f"unknown feature extractor {name!r}; available: {', '.join(available_extractors())}"
        )
    if ndim not in (2, 3):
        raise UniRegError(f"feature extractors work on 2-D or 3-D images, got ndim={ndim!r}")
    return _REGISTRY[key](ndim=ndim, **kwargs)
