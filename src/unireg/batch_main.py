"""``python -m unireg.batch_main MANIFEST --out DIR [options]``: ``unireg batch`` as a module, for torchrun.

torchrun starts a Python script or, with ``-m``, a module, so this is the entry point for running a
batch over several processes or nodes::

    torchrun --nproc_per_node 2 -m unireg.batch_main manifest.csv --out results/
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m unireg.batch_main manifest.csv --out /shared/results/

(``torchrun --no-python unireg batch manifest.csv --out DIR`` and ``python -m unireg.cli.main batch``
work too: the ``batch`` command itself reads ``RANK``/``WORLD_SIZE``/``LOCAL_WORLD_SIZE``.)

Each process registers the pairs ``i % WORLD_SIZE == RANK`` with ``max(1, cores // LOCAL_WORLD_SIZE)``
torch threads (unless ``--threads`` is given), writes ``DIR/summary.rank<RANK>.csv``; after a gloo
barrier rank 0 writes ``DIR/summary.csv`` and ``DIR/index.html``.  ``DIR`` must be on a file system
shared by all nodes.  Options are those of ``unireg batch`` (``--help``); global options
(``--debug``, ``--threads N``) go first.
"""

from __future__ import annotations

import sys

from .cli.allocator import keep_freed_memory
from .cli.main import app

_GLOBAL_FLAGS = {"--debug"}
_GLOBAL_WITH_VALUE = {"--threads"}


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the unireg command does (unireg.cli.allocator)
    args = list(sys.argv[1:] if argv is None else argv)
    glob: list[str] = []
    while args and (args[0] in _GLOBAL_FLAGS or args[0] in _GLOBAL_WITH_VALUE or args[0].startswith("--threads=")):
        a = args.pop(0)
        glob.append(a)
        if a in _GLOBAL_WITH_VALUE and args:
            glob.append(args.pop(0))
    app(args=[*glob, "batch", *args], prog_name="unireg.batch_main")


if __name__ == "__main__":  # pragma: no cover
    main()
