"""Atomic file writing and output-directory checks.

Every writer in :mod:`unireg.io` writes to a temporary file in the destination directory and
renames it onto the final name only when writing succeeded, so a crash or a full disk never leaves
a half-written image that a later run would mistake for a result.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from unireg.errors import UniRegError

__all__ = ["atomic_path", "check_output_dir"]


def _suffixes(name: str) -> str:
    """All suffixes of ``name`` (``"a.warp.nii.gz"`` -> ``".warp.nii.gz"``), so writers that pick
    their format from the extension (nibabel, SimpleITK) see the same one."""
    i = name.find(".", 1)  # from 1: a leading dot marks a hidden file, not a suffix
    return "" if i < 0 else name[i:]


@contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; move it onto ``final_path`` on success.

    Parameters
    ----------
    final_path : path-like
        Where the file should end up.  Its directory must exist.

    Yields
    ------
    Path
        ``<dir>/.tmp-<random><suffixes>`` (e.g. ``.tmp-3fa9c1d2.warp.nii.gz``).  The file does not
        exist yet; the caller creates it.  After the ``with`` block it is moved onto ``final_path``
        with :func:`os.replace` (atomic on POSIX within one file system).  If the block raises, the
        temporary file is deleted and the exception propagates; ``final_path`` is left untouched.
    """
    final = Path(final_path)
    tmp = final.parent / f".tmp-{secrets.token_hex(4)}{_suffixes(final.name)}"
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create the output directory ``path`` (with parents) and check that it is writable.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    UniRegError
        If ``path`` exists and is not a directory, cannot be created, or is not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UniRegError("output directory exists and is a file, not a directory", p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniRegError(f"cannot create output directory ({e.strerror or e})", p) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UniRegError("output directory is not writable", p)
    return p
