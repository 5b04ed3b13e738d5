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


def test_a_step_where_not_alive_changes_nothing_and_an_alive_one_is_the_plain_step():
    """``step(alive)``: the affine MI loop's device-side stop; bit for bit the plain update when set."""
    torch.manual_seed(1)
    target = torch.randn(4, 3, dtype=torch.float64)
    a = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    plain, masked = Adam([a], lr=0.05), Adam([b], lr=0.05)
    for i in range(6):
        for p, opt in ((a, plain), (b, masked)):
            opt.zero_grad()
            ((p - target) ** 2 * (i + 1)).sum().backward()
        plain.step()
        masked.step(torch.tensor(True))
        assert torch.equal(a, b) and torch.equal(plain.m[0], masked.m[0]) and torch.equal(plain.v[0], masked.v[0])
    before = [t.clone() for t in (b, masked.m[0], masked.v[0])]
    masked.zero_grad()
    ((b - target) ** 2).sum().backward()
    masked.step(torch.tensor(False))
    assert all(torch.equal(x, y) for x, y in zip(before, (b, masked.m[0], masked.v[0]), strict=True))
