"""The deformation UNet: any input size, smoothness conditioning (FiLM), gradients."""

from __future__ import annotations

import math

import pytest
import torch

from unireg.models.unet import UNet, encode_smoothness

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "shape, enc, dec",
    [
        ((17, 23), [8, 8, 8], [8, 8]),
        ((31, 9), [4, 8, 8, 8], [8, 8, 8]),
        ((5, 7), [4, 4, 4], [4, 4, 4]),
        ((9, 13, 11), [4, 8, 8], [8, 8]),
        ((7, 5, 15), [4, 4, 4, 4], [4, 4]),
    ],
)
def test_any_size_gives_ceil_shape(shape, enc, dec):
    nd = len(shape)
    net = UNet(nd, 3, enc=enc, dec=dec, cond_dim=8)
    f, m = torch.randn(2, 3, *shape), torch.randn(2, 3, *shape)
    v = net(f, m, torch.tensor([0.5, 2.0]))
    f_out = 2 ** (len(enc) - len(dec))
    assert v.shape == (2, nd, *[math.ceil(n / f_out) for n in shape])
    assert torch.isfinite(v).all()


def test_decoder_longer_than_encoder_rejected():
    with pytest.raises(ValueError):
        UNet(2, 1, enc=[4, 4], dec=[4, 4, 4])


def test_encode_smoothness_range():
    lam = torch.tensor([0.1, 1.0, 10.0])
    e = encode_smoothness(lam)
    assert torch.allclose(e, torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)


def _with_output(net):
    torch.nn.init.normal_(net.head.weight, std=0.1)  # the head starts near zero on purpose
    return net


def test_film_starts_neutral_then_conditions():
    torch.manual_seed(0)
    net = _with_output(UNet(2, 2, enc=[4, 4, 4], dec=[4, 4], cond_dim=8)).eval()
    f, m = torch.randn(1, 2, 20, 18), torch.randn(1, 2, 20, 18)
    with torch.no_grad():
        a = net(f, m, torch.tensor([0.2]))
        b = net(f, m, torch.tensor([5.0]))
    assert torch.equal(a, b)  # FiLM initialised to the identity: no effect yet
    for blk in [net.stem, *net.down, *net.up]:
        torch.nn.init.normal_(blk.film.weight, std=0.5)
    with torch.no_grad():
        a = net(f, m, torch.tensor([0.2]))
        b = net(f, m, torch.tensor([5.0]))
        a2 = net(f, m, torch.tensor([0.2]))
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, a2)  # deterministic
    # per-sample conditioning in one batch
    with torch.no_grad():
        both = net(torch.cat([f, f]), torch.cat([m, m]), torch.tensor([0.2, 5.0]))
    assert torch.allclose(both[0], a[0], atol=1e-5) and torch.allclose(both[1], b[0], atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = _with_output(UNet(3, 2, enc=[4, 4, 4], dec=[4, 4], cond_dim=4))
    for blk in [net.stem, *net.down, *net.up]:
        torch.nn.init.normal_(blk.film.weight, std=0.1)
    v = net(torch.randn(1, 2, 9, 10, 11), torch.randn(1, 2, 9, 10, 11), torch.tensor([1.0]))
    v.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
