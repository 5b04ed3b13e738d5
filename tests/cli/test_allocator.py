"""The command line keeps freed memory for reuse (glibc): a freed volume's pages serve the next one,
in the main thread and in worker threads, without being faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import unireg.batch_main
import unireg.cli.main as cli_main
from unireg.cli.allocator import ENV_SWITCH

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)

# 256 MB allocated, filled and freed, then 192 MB in the main thread and 160 MB in a new thread (a
# later block that fits in a freed one, as a registration's volumes mostly do): page faults per page
_PROBE = r"""
import json, resource, threading
from unireg.cli.allocator import keep_freed_memory

applied = keep_freed_memory()  # first, as the entry points do: before torch starts threads of its own
import torch

MB = 1024 * 1024

def fill(nbytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(nbytes // 4)
    x.fill_(1.0)
    del x
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (nbytes // 4096)

out = {"applied": applied, "first": fill(256 * MB), "main": fill(192 * MB)}
t = threading.Thread(target=lambda: out.update(thread=fill(160 * MB)))
t.start()
t.join()
print(json.dumps(out))
"""


def _probe(env_extra: dict) -> dict:
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@glibc
def test_freed_volumes_are_reused_without_page_faults_in_every_thread():
    on = _probe({})
    assert on["applied"] is True
    assert on["main"] < 0.02 and on["thread"] < 0.02, on
    # the yardstick: glibc's defaults fault a large block in afresh each time (so this test can fail)
    off = _probe({ENV_SWITCH: "default"})
    assert off["applied"] is False
    assert off["main"] > 0.5 and off["thread"] > 0.5, off


def test_the_entry_points_apply_it_first(monkeypatch):
    calls = []
    for mod in (cli_main, unireg.batch_main):
        monkeypatch.setattr(mod, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        monkeypatch.setattr(sys, "argv", ["unireg", "--version"])
        cli_main.main()
    with pytest.raises(SystemExit):
        unireg.batch_main.main(["--help"])
    assert len(calls) == 2


def test_an_earlier_in_process_run_does_not_end_the_next_one(monkeypatch):
    """``main`` ends a finished ``register`` with ``os._exit``; a later ``main`` in the same process (a
    test run, an embedding program) starts unfinished, so it returns or raises as usual."""
    monkeypatch.setitem(cli_main._STATE, "finished", True)  # as a register that wrote its outputs leaves it
    monkeypatch.setattr(sys, "argv", ["unireg", "--version"])
    with pytest.raises(SystemExit) as e:
        cli_main.main()
    assert e.value.code in (0, None)
