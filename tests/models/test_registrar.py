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


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "foreign", "missing_weights", "wrong_shapes",
                                  "bad_config", "no_config", "unknown_extractor"])
def test_corrupt_checkpoint_is_user_error(kind, good_ckpt, tmp_path):
    p = _corrupt(kind, good_ckpt, tmp_path)
    with pytest.raises(UniRegError) as ei:
        load_registrar(p)
    assert ei.value.path == str(p)
    assert "\n" not in str(ei.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UniRegError, match="not found"):
        load_registrar(tmp_path / "nope.pt")
