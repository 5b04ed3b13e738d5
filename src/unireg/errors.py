"""User-facing errors: one line, naming the file and the problem (CLI exits with code 2)."""

from __future__ import annotations

from pathlib import Path


class UniRegError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
