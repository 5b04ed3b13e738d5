"""A CUDA device made ready in the background while a command reads its inputs.

A process's first registration on a GPU pays one-off costs besides its work: the CUDA context, the
cuDNN and cuBLAS handles, the autograd engine's device thread, and the loading of each kernel on its
first launch (1.3-2.9 s on an H100, against ~1 s of work).  :func:`start` pays the largest of them in
a daemon thread, on tiny tensors, overlapping the file reading and model loading that come first; the
registration itself is unchanged (no random numbers drawn, nothing kept: handles and loaded kernels
are process-wide, and a finished thread's handles go back to torch's pool for the next one).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

__all__ = ["start"]


def _run(dev: torch.device) -> bool:
    """The warm-up itself (any device: the CPU runs it in the tests); True when every step ran."""
    try:
        with torch.enable_grad():
            x = torch.zeros((1, 1, 6, 6, 6), device=dev, requires_grad=True)
            y = F.conv3d(x, torch.zeros((2, 1, 3, 3, 3), device=dev), padding=1)  # cuDNN
            g = torch.zeros((1, 4, 4, 4, 3), device=dev, requires_grad=True)
            y = y.sum() + F.grid_sample(x, g, align_corners=True).sum()
            y.backward()  # the autograd engine's thread for this device, sampling's backward
        torch.bmm(torch.zeros((2, 3, 3), device=dev), torch.zeros((2, 3, 3), device=dev))  # cuBLAS
        torch.sort(torch.zeros(1 << 20, device=dev))  # percentiles (radix sort: past the small-sort path)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return True
    except Exception:  # noqa: BLE001 - a warm-up that fails costs nothing: the registration reports errors
        return False


def start(device: str | torch.device) -> threading.Thread | None:
    """Warm ``device`` up in a daemon thread (CUDA only; None elsewhere, or where CUDA is missing)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return None
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    t = threading.Thread(target=_run, args=(dev,), name="unireg-cuda-warmup", daemon=True)
    t.start()
    return t
