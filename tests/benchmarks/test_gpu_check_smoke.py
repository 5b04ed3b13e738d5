"""benchmarks/gpu_check.py: end to end on CPU on a small crop, and its answer where CUDA is missing."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ not present")


def test_gpu_check_runs_on_cpu():
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], capture_output=True, text=True,
                       cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("| affine |", "| refine |", "| integrate |", "| resample |", "**total**", "2nd call", "whole CLI"):
        assert stage in r.stdout, r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the no-CUDA answer cannot be seen")
def test_gpu_check_without_cuda():
    dry = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert dry.returncode == 0 and "no CUDA device" in dry.stdout
    real = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert real.returncode == 2 and "no CUDA device" in real.stdout


def test_gpu_profile_runs_on_cpu(tmp_path):
    """benchmarks/gpu_profile.py's in-process part on a small crop: the calls' figures and their tables."""
    script = ROOT / "benchmarks" / "gpu_profile.py"
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--parts", "call", "--out",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in ("cold call", "warm call", "torch.profiler by self_cpu_time_total"):
        assert line in r.stdout, r.stdout[-3000:]
    for name in ("call_cold.txt", "call_warm.txt", "torch_self_cpu_time_total.txt"):
        assert (tmp_path / name).stat().st_size > 0
