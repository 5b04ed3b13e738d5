"""Similarity terms of unireg.losses."""

from __future__ import annotations

import torch

from unireg.losses import feature_mse, feature_mse_each


def test_feature_mse_each_is_feature_mse_of_each_item_alone():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 4, 6, 7, generator=g), torch.rand(3, 4, 6, 7, generator=g)
    mask = (torch.rand(3, 1, 6, 7, generator=g) > 0.4).float()
    mask[2] = 0  # an item with nothing to compare: 0, not NaN
    each = feature_mse_each(a, b, mask)
    assert each.shape == (3,)
    for i in range(3):
        assert torch.allclose(each[i], feature_mse(a[i : i + 1], b[i : i + 1], mask[i : i + 1]))
    shared = (mask[:1] > 0).float()  # one mask for every item broadcasts
    each = feature_mse_each(a, b, shared)
    for i in range(3):
        assert torch.allclose(each[i], feature_mse(a[i : i + 1], b[i : i + 1], shared))


def test_parzen_mutual_information_measures_dependence_not_its_direction():
    """MI of a sample with itself is high, with an inverted copy the same, with a shuffled copy ~0;
    a zero weight leaves a sample out exactly; the gradient reaches the second sample."""
    from unireg.losses.similarity import parzen_mutual_information

    g = torch.Generator().manual_seed(1)
    a = torch.rand(20_000, generator=g)
    ones = torch.ones_like(a)
    same = parzen_mutual_information(a, a, ones)
    assert float(same) > 1.5  # log(32) = 3.5 less the Parzen blur
    assert abs(float(parzen_mutual_information(a, 1 - a, ones)) - float(same)) < 0.02
    assert float(parzen_mutual_information(a, a[torch.randperm(a.numel(), generator=g)], ones)) < 0.05
    half = torch.zeros_like(a)
    half[:10_000] = 1
    noise = torch.rand(20_000, generator=g)
    mixed = torch.cat([a[:10_000], noise[10_000:]])
    assert torch.allclose(
        parzen_mutual_information(a, mixed, half), parzen_mutual_information(a[:10_000], a[:10_000], ones[:10_000])
    )
    b = (a * 0.5 + 0.25).clone().requires_grad_(True)
    parzen_mutual_information(a, b, ones).backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0


def test_parzen_mutual_information_computes_no_subnormal_numbers():
    """The Gaussian windows' far tails are cut to exact zeros: no per-point step of the MI, forward or
    backward, produces a subnormal float (x86 CPUs compute those ~30x slower: the affine stage's MI steps took
    1 s of the 1 mm MNI pair's 4 s), and the MI and its gradient are those of the untruncated windows."""
    from torch.overrides import TorchFunctionMode

    import unireg.losses.similarity as S

    tiny = torch.finfo(torch.float32).tiny
    seen = []

    class Scan(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.dtype == torch.float32 and o.numel() >= n:
                    with torch._C.DisableTorchFunction():  # (the bins x bins histogram's few are cheap)
                        m = o.detach().abs()
                        seen.append(int(((m > 0) & (m < tiny)).sum()))
            return out

    g = torch.Generator().manual_seed(4)
    n = 5000
    a = torch.rand(n, generator=g)
    b = (a * 0.6 + 0.2 + 0.1 * torch.rand(5000, generator=g)).requires_grad_(True)
    w = torch.ones_like(a)
    with Scan():
        mi = S.parzen_mutual_information(a, b, w)
        (grad,) = torch.autograd.grad(mi, b)
    assert seen and sum(seen) == 0
    b2 = b.detach().clone().requires_grad_(True)
    floor = S.WINDOW_FLOOR
    try:
        S.WINDOW_FLOOR = -1e30  # the whole Gaussian
        full = S.parzen_mutual_information(a, b2, w)
        (full_grad,) = torch.autograd.grad(full, b2)
    finally:
        S.WINDOW_FLOOR = floor
    assert float(full) == float(mi)
    assert torch.allclose(grad, full_grad, rtol=0, atol=1e-9)
