"""One test spy: a module's function replaced by a wrapper that records something about each call,
then calls the original."""

from __future__ import annotations

from typing import Any, Callable


def spy_on(monkeypatch, owner, name: str, record: Callable[..., Any], real: Callable | None = None) -> list:
    """Replace ``owner.name`` (for the test) by a wrapper that appends ``record(*args, **kwargs)`` to the
    returned list on each call, then returns ``real(*args, **kwargs)`` (default: the function it replaces)."""
    seen: list = []
    real = getattr(owner, name) if real is None else real

    def spy(*args, **kwargs):
        seen.append(record(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen
