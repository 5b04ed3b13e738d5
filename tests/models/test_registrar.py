"""Registrar = frozen features + UNet: frozen extractor, checkpoints round trip, corrupt checkpoints."""

from __future__ import annotations

import pytest
import torch

from unireg.errors import UniRegError
from unireg.models.registrar import Registrar, load_registrar

from ..synthetic_pairs import tiny_registrar

torch.set_num_threads(1)


def _randomise(reg: Registrar) -> Registrar:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reg.unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return reg


@pytest.mark.parametrize("ndim, shape", [(2, (21, 26)), (3, (11, 13, 9))])
def test_velocity_and_displacement_shapes(ndim, shape):
    reg = tiny_registrar(ndim, 1.0).eval()
    x = torch.rand(1, 1, *shape)
    ff = reg.extract(x)
    assert ff.shape[0] == 1 and ff.shape[2:] == shape
    v = reg(ff, reg.extract(torch.rand(1, 1, *shape)), 1.0)
    assert v.shape == (1, ndim, *[(n + 1) // 2 for n in shape])
    d = reg.displacement(v, shape)
    assert d.shape == (1, ndim, *shape)


def test_extractor_is_frozen_and_stays_in_eval():
    reg = tiny_registrar(2, 1.0)
    reg.train()
    assert not reg.features.training
    assert all(not p.requires_grad for p in reg.features.parameters())
    assert all(p.requires_grad for p in reg.unet.parameters())


@pytest.mark.parametrize("ndim, shape", [(2, (19, 24)), (3, (10, 12, 9))])
def test_checkpoint_round_trip_identical_outputs(ndim, shape, tmp_path):
    reg = _randomise(tiny_registrar(ndim, 1.3, meta={"name": "tiny-test"})).eval()
    reg.save(tmp_path / "sub" / "m.pt", extra={"step": 7})
    back = load_registrar(tmp_path / "sub" / "m.pt")
    assert back.config == reg.config
    assert back.working == {"spacing": 1.3, "max_size": 32} and back.meta["name"] == "tiny-test"
    torch.manual_seed(0)
    f, m = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    with torch.no_grad():
        a = reg(reg.extract(f), reg.extract(m), 0.7)
        b = back(back.extract(f), back.extract(m), 0.7)
    assert torch.equal(a, b)
    assert not [p for p in tmp_path.joinpath("sub").iterdir() if p.name.startswith(".tmp")]


@pytest.fixture
def good_ckpt(tmp_path):
    p = tmp_path / "good.pt"
    tiny_registrar(2, 1.0).save(p)
    return p


def _corrupt(kind: str, good, tmp_path):
    p = tmp_path / f"{kind}.pt"
    raw = good.read_bytes()
    if kind == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif kind == "garbage":
        p.write_bytes(b"\x00\x01garbage" * 100)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, p)
    else:
        ck = torch.load(good, weights_only=False)
        if kind == "missing_weights":
            ck["state_dict"] = dict(list(ck["state_dict"].items())[:-2])
        elif kind == "wrong_shapes":
            ck["state_dict"] = {k: v.flatten()[:1].clone() for k, v in ck["state_dict"].items()}
        elif kind == "bad_config":
            ck["config"] = dict(ck["config"], not_an_argument=1)
        elif kind == "no_config":
            del ck["config"]
        elif kind == "unknown_extractor":
            ck["config"] = dict(ck["config"], extractor="nonexistent")
        torch.save(ck, p)
    return p


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "garbage",
        "empty",
        "foreign",
        "missing_weights",
        "wrong_shapes",
        "bad_config",
        "no_config",
        "unknown_extractor",
    ],
)
def test_corrupt_checkpoint_is_user_error(kind, good_ckpt, tmp_path):
    p = _corrupt(kind, good_ckpt, tmp_path)
    with pytest.raises(UniRegError) as ei:
        load_registrar(p)
    assert ei.value.path == str(p)
    assert "\n" not in str(ei.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UniRegError, match="not found"):
        load_registrar(tmp_path / "nope.pt")


def test_a_second_pass_of_the_shipped_3d_network_closes_more_of_the_gap():
    """Registrar.predict as a recursive cascade: the second pass sees the moving features pulled
    through the first velocity and predicts what is left; on a shifted MNI pair at 4 mm it lowers
    the feature cost below one pass's."""
    import torch.nn.functional as F

    from unireg.data.mni import load_mni
    from unireg.losses import feature_mse
    from unireg.models.registrar import default_model_path, load_registrar
    from unireg.spatial.grid import warp

    torch.set_num_threads(1)
    reg = load_registrar(default_model_path(3)).eval()
    t1 = torch.from_numpy(load_mni(2.0)["t1"].data[0]).float()[None, None]  # the working grid
    t1 = t1 / t1.amax()
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in t1.shape[2:]], indexing="ij"))
    u = torch.stack([1.5 * torch.sin(3 * g[1]), 1.5 * torch.cos(3 * g[2]), 1.2 * torch.sin(3 * g[0])])[None]
    moving = warp(t1, 2 * u)  # up to 3 voxels = 6 mm
    with torch.no_grad():
        ff, fm = reg.extract(t1), reg.extract(moving)
        cost = {}
        for passes in (1, 2):
            v = reg.predict(ff, fm, passes=passes)
            cost[passes] = float(feature_mse(ff, warp(fm, reg.displacement(v, ff.shape[2:]))))
        v1 = reg(ff, fm)
        assert torch.equal(reg.predict(ff, fm, passes=1), v1)
    before = float(feature_mse(ff, fm))
    assert cost[1] < before and cost[2] < cost[1] * 0.97, (before, cost)
    assert F.mse_loss(v1, torch.zeros_like(v1)) > 0


def test_a_pass_that_raises_the_feature_cost_ends_the_cascade(monkeypatch):
    from unireg.models.registrar import Registrar

    reg = Registrar(3, extractor="mind", unet={"enc": [4, 4, 4], "dec": [4, 4]}).eval()
    g = torch.Generator().manual_seed(0)
    ff = torch.nn.functional.avg_pool3d(torch.rand(1, 12, 20, 20, 20, generator=g), 3, 1, 1)
    outputs = [torch.zeros(1, 3, 10, 10, 10), 3.0 * torch.randn(1, 3, 10, 10, 10, generator=g)]
    calls = []

    def fake(fixed_feat, moving_feat, smoothness=1.0):
        calls.append(1)
        return outputs[min(len(calls), len(outputs)) - 1]

    monkeypatch.setattr(reg, "forward", fake)
    v = reg.predict(ff, ff.clone(), passes=3)
    assert torch.equal(v, outputs[0]) and len(calls) == 2  # the harmful second pass refused, no third


def test_symmetric_prediction_is_inverse_consistent():
    """predict(symmetric=True): the mean of the (fixed, moving) estimate and the negated (moving, fixed)
    one, so swapping the images negates the velocity exactly (exp(-v) is the inverse of exp(v)); the
    one-way prediction of a random network does not have that property."""
    from unireg.models.registrar import Registrar

    torch.manual_seed(0)
    reg = Registrar(3, extractor="mind", unet={"enc": [4, 4, 4], "dec": [4, 4]}).eval()
    with torch.no_grad():  # the velocity head starts at zero: give every weight a random value
        for w in reg.unet.parameters():
            w.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.nn.functional.avg_pool3d(torch.rand(1, 12, 16, 16, 16, generator=g), 3, 1, 1) for _ in range(2))
    with torch.no_grad():
        v_ab, v_ba = reg.predict(a, b, symmetric=True), reg.predict(b, a, symmetric=True)
        assert torch.allclose(v_ab, -v_ba, atol=1e-6)
        assert torch.allclose(v_ab, 0.5 * (reg(a, b) - reg(b, a)), atol=1e-6)
        one_way = reg.predict(a, b), reg.predict(b, a)
    assert v_ab.abs().amax() > 1e-2
    assert not torch.allclose(one_way[0], -one_way[1], atol=1e-3)


def test_the_network_is_symmetrised_only_when_it_has_the_last_word():
    """3-D `--refine 0`: symmetrised passes; with refinement after it (the default) one one-way pass."""
    from types import SimpleNamespace

    from unireg.stages import deformable

    def state(refine, nd=3, trained=True):
        opts = SimpleNamespace(refine=refine, fast=False, native=True)
        return SimpleNamespace(model=SimpleNamespace(trained=trained), opts=opts, fine_factor=2, nd=nd)

    assert deformable.network_symmetric(state(0)) is deformable.NETWORK_ONLY_SYMMETRIC[3] is True
    assert deformable.network_passes(state(0)) == deformable.NETWORK_ONLY_PASSES[3]
    assert deformable.network_symmetric(state(None)) is False and deformable.network_passes(state(None)) == 1
    assert deformable.network_symmetric(state(0, trained=False)) is False
