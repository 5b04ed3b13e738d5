import torch

from unireg.align.optim import Adam


def test_matches_torch_adam():
    torch.manual_seed(0)
    target = torch.randn(5, 3)
    a = torch.zeros(5, 3, requires_grad=True)
    b = torch.zeros(5, 3, requires_grad=True)
    ours, ref = Adam([a], lr=0.05), torch.optim.Adam([b], lr=0.05)
    for _ in range(20):
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-6)
