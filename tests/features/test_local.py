"""UniReg's local encoder: frozen, shapes, receptive field, checkpoints, shipped weights, pre-training."""

import math

import pytest
import torch

from unireg.errors import UniRegError
from unireg.features import LocalEncoder, create_extractor
from unireg.features import local as local_mod

torch.set_num_threads(1)


def _phantom(shape, seed=0):
    """Smooth blobs: a tiny stand-in for anatomy."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape], indexing="ij")
    img = torch.zeros(shape)
    for _ in range(6):
        c = torch.rand(len(shape), generator=g)
        r2 = sum((a - ci) ** 2 for a, ci in zip(axes, c))
        img += torch.rand((), generator=g) * torch.exp(-r2 / (0.02 + 0.05 * torch.rand((), generator=g)))
    return img[None, None]


@pytest.mark.parametrize("shape", [(7, 9, 11), (12, 10, 9), (15, 16), (9, 13)])
def test_output_shape_equals_input_shape(shape):
    ext = LocalEncoder(ndim=len(shape))
    out = ext(torch.rand((2, 1) + shape))
    assert out.shape == (2, 16) + shape and ext.out_channels == 16
    dims = tuple(range(2, out.dim()))
    assert torch.allclose(out.mean(dim=dims), torch.zeros(2, 16), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_frozen_and_gradient_reaches_the_input(ndim):
    ext = LocalEncoder(ndim=ndim)
    assert not ext.training and all(not p.requires_grad for p in ext.parameters())
    image = _phantom((10, 9, 8) if ndim == 3 else (14, 13)).requires_grad_(True)
    ext(image).square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.parameters())
    ext.train()
    assert not ext.training


def test_trainable_variant_is_for_pretraining_only():
    enc = LocalEncoder(ndim=2, trainable=True)
    assert all(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training
    assert "trainable" not in enc.config


@pytest.mark.parametrize("ndim", [2, 3])
def test_receptive_field_is_7_voxels(ndim):
    ext = LocalEncoder(ndim=ndim)
    assert ext.receptive_field == 7
    n = 13
    x = torch.zeros((1, 1) + (n,) * ndim)
    y = x.clone()
    y[(0, 0) + (n // 2,) * ndim] = 1.0
    changed = (ext.body(y) - ext.body(x)).abs().amax(dim=1)[0] > 0
    idx = changed.nonzero()
    assert idx.min().item() == n // 2 - 3 and idx.max().item() == n // 2 + 3


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    enc = LocalEncoder(ndim=3, trainable=True)
    path = enc.save(tmp_path / "sub" / "enc.pt", step=5)
    assert [p.name for p in path.parent.iterdir()] == ["enc.pt"]  # atomic: no temp file left
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"] == enc.config and set(ckpt["state_dict"]) == set(enc.state_dict())
    assert ckpt["meta"]["step"] == 5
    loaded = create_extractor("local", ndim=3, weights=path)
    assert isinstance(loaded, LocalEncoder) and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 1, 8, 9, 10)
    assert torch.equal(loaded(x), enc(x).detach())


def test_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(UniRegError, match="not found"):
        create_extractor("local", ndim=2, weights=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(UniRegError, match="config"):
        create_extractor("local", ndim=2, weights=bad)
    three = LocalEncoder(ndim=3).save(tmp_path / "three.pt")
    with pytest.raises(UniRegError, match="3-D"):
        create_extractor("local", ndim=2, weights=three)
    monkeypatch.setattr(local_mod, "shipped_weights_path", lambda ndim: None)
    with pytest.raises(UniRegError, match="not installed"):
        create_extractor("local", ndim=3)


def _cosines(f1, f2, n=400, seed=0):
    """Mean cosine similarity at the same voxels and between shuffled voxels."""
    a = torch.nn.functional.normalize(f1.flatten(2)[0], dim=0)
    b = torch.nn.functional.normalize(f2.flatten(2)[0], dim=0)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(a.shape[1], generator=g)[:n]
    perm = idx[torch.randperm(n, generator=g)]
    return (a[:, idx] * b[:, idx]).sum(0).mean().item(), (a[:, idx] * b[:, perm]).sum(0).mean().item()


@pytest.mark.parametrize("ndim", [2, 3])
def test_shipped_weights(ndim):
    path = local_mod.shipped_weights_path(ndim)
    if path is None:
        pytest.skip(f"unireg/weights/local_{ndim}d.pt not installed (run unireg.training.pretrain_local)")
    ext = create_extractor("local", ndim=ndim)
    assert ext.ndim == ndim and ext.out_channels == 16 and not ext.training
    shape = (24, 22, 20) if ndim == 3 else (48, 44)
    img = _phantom(shape, seed=ndim)
    f = ext(img)
    assert f.shape == (1, 16) + shape and torch.isfinite(f).all()
    # an unseen non-linear contrast change keeps the features close at the same voxel
    other = torch.sqrt(img.clamp_min(0)) * 7.0 + 3.0
    same, different = _cosines(f, ext(other))
    assert same > different + 0.3


def test_pretraining_smoke(tmp_path):
    pytest.importorskip("nilearn")
    pytest.importorskip("nibabel")
    from unireg.training import pretrain_local as pl

    if not pl.mni_t1_path().is_file():
        pytest.skip("nilearn's MNI template is not installed")
    out = tmp_path / "enc2d.pt"
    pl.train(ndim=2, steps=2, out=out, seed=0, batch=2, patch=24, samples=32, log_every=1)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["step"] == 2 and math.isfinite(ckpt["meta"]["final_loss"])
    assert isinstance(create_extractor("local", ndim=2, weights=out), LocalEncoder)


def test_random_contrast_and_info_nce():
    from unireg.training.pretrain_local import info_nce, random_contrast

    x = _phantom((16, 16))
    a = random_contrast(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, random_contrast(x, torch.Generator().manual_seed(3)))
    f = torch.randn(1, 8, 16, 16)
    w = torch.ones(1, 256)
    same = info_nce(f, f, w, 64, torch.Generator().manual_seed(0))
    shuffled = info_nce(f, torch.randn(1, 8, 16, 16), w, 64, torch.Generator().manual_seed(0))
    assert same < shuffled
