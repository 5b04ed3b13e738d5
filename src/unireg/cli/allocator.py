"""The command line's memory allocator settings (glibc): freed memory is kept for reuse.

A registration allocates and frees whole volumes many times over (features, sampled fields,
slabs, output arrays: tens to hundreds of MB each).  By default glibc serves every block above
32 MB from fresh ``mmap`` pages, each 4 KiB page faulted in and zero-filled by the kernel, and hands
it back on ``free``; worker threads (the samplers, writers and feature workers) allocate from arenas
of their own, which do the same for any large block.  So the same memory is faulted in again and
again.  :func:`keep_freed_memory` puts every thread on the one main heap (``M_ARENA_MAX`` 1), serves
large blocks from it too (``M_MMAP_MAX`` 0) and never shrinks it (``M_TRIM_THRESHOLD``): a freed
volume's pages serve the next block that fits in them, already mapped.

Measured on the 1 mm MNI demo pair, whole ``unireg --threads 2 register`` on this project's 2-core
machine (``/usr/bin/time``, three runs each, interleaved with ``UNIREG_MALLOC=default``, 2026-11-29):
page faults 1.93-2.03 M -> 0.59-0.66 M, system time 6.0-6.9 s -> 2.5-3.1 s, wall 17.5-18.0 s ->
15.8-16.3 s; peak RSS 2.37-2.56 GB -> 2.50-2.78 GB; every output the same, value for value.  The
price: the process keeps its peak heap until it exits (a batch keeps its largest pair's).

Only the command line does this (the process is ours); :mod:`unireg.api` leaves a host program's
allocator alone.  ``UNIREG_MALLOC=default`` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory", "ENV_SWITCH"]

ENV_SWITCH = "UNIREG_MALLOC"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Apply the settings above to this process (call it before any worker thread starts); True if
    applied, False where the C library is not glibc or ``UNIREG_MALLOC=default``."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 as the trim threshold is SIZE_MAX to glibc: the heap is never trimmed
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    return all(mallopt(param, value) == 1 for param, value in settings)
