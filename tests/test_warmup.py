"""The CUDA warm-up: started only for a CUDA device that exists; its steps run (checked on the CPU)."""

from __future__ import annotations

import pytest
import torch

from unireg import warmup


def test_no_thread_without_a_cuda_device():
    assert warmup.start("cpu") is None
    assert warmup.start("not-a-device") is None
    if not torch.cuda.is_available():
        assert warmup.start("cuda") is None


def test_the_warm_up_steps_run_and_leave_the_random_state_alone():
    state = torch.get_rng_state()
    assert warmup._run(torch.device("cpu")) is True
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_warm_up_thread_finishes():
    t = warmup.start("cuda")
    assert t is not None
    t.join(60)
    assert not t.is_alive()
