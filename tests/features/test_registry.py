"""Registry by name, the FeatureExtractor base class and shared helpers."""

import pytest
import torch

import unireg.features as features
from unireg.errors import UniRegError
from unireg.features import FeatureExtractor, available_extractors, create_extractor, freeze, register_extractor
from unireg.features import registry
from unireg.features.base import instance_normalize, percentile_rescale

torch.set_num_threads(1)


def test_available_extractors_lists_the_three_builtins():
    names = available_extractors()
    assert names == sorted(names)
    assert {"mind", "imagenet", "local"} <= set(names)


def test_unknown_name_is_a_user_error_listing_the_available_ones():
    with pytest.raises(UniRegError) as exc:
        create_extractor("sift", ndim=3)
    msg = str(exc.value)
    assert "sift" in msg
    for name in ("imagenet", "local", "mind"):
        assert name in msg


def test_bad_ndim_is_a_user_error():
    with pytest.raises(UniRegError, match="ndim"):
        create_extractor("mind", ndim=4)


def test_create_by_name_is_case_insensitive_and_passes_kwargs():
    ext = create_extractor("MIND", ndim=2, dilation=1)
    assert isinstance(ext, FeatureExtractor)
    assert (ext.name, ext.ndim, ext.out_channels, ext.dilation) == ("mind", 2, 4, 1)


class _Toy(FeatureExtractor):
    name = "toy"

    def __init__(self, ndim: int = 2):
        super().__init__()
        self.ndim, self.out_channels = ndim, 2
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)
        freeze(self)

    def forward(self, image):
        self.check_input(image)
        return self.bn(self.conv(image))


def test_register_extractor_adds_a_factory(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_extractor("toy")(_Toy)
    assert "toy" in available_extractors()
    ext = create_extractor("toy", ndim=2)
    assert isinstance(ext, _Toy)
    with pytest.raises(ValueError):
        register_extractor("toy")(lambda ndim: _Toy(ndim))


def test_base_class_freezes_and_stays_in_eval_mode():
    ext = _Toy()
    assert not ext.training and not ext.bn.training
    assert all(not p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training and not ext.bn.training
    wrapper = torch.nn.Sequential(ext)
    wrapper.train()  # a surrounding model's .train() must not unfreeze BatchNorm statistics
    assert not ext.bn.training
    before = ext.bn.running_mean.clone()
    ext(torch.randn(2, 1, 8, 8) * 5 + 3)
    assert torch.equal(before, ext.bn.running_mean)


def test_check_input_rejects_wrong_shapes():
    ext = _Toy()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ext(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError):
        ext(torch.zeros(1, 1, 4, 8, 8))


def test_percentile_rescale_maps_1st_and_99th_percentiles_to_0_and_1():
    x = torch.arange(101, dtype=torch.float64).view(1, 1, 101)  # percentiles are the values
    y = percentile_rescale(x.view(1, 1, 101, 1), clip=False).view(-1)
    assert y[1].item() == pytest.approx(0.0) and y[99].item() == pytest.approx(1.0)
    yc = percentile_rescale(x.view(1, 1, 101, 1)).view(-1)
    assert yc.min().item() == 0.0 and yc.max().item() == 1.0
    # per batch item, invariant to a * I + b (a > 0)
    z = torch.randn(2, 1, 9, 7)
    assert torch.allclose(percentile_rescale(z), percentile_rescale(4.0 * z - 3.0), atol=1e-5)
    assert torch.equal(percentile_rescale(torch.full((1, 1, 4, 4), 7.0)), torch.zeros(1, 1, 4, 4))


def test_percentile_rescale_lets_gradients_reach_the_input():
    x = torch.randn(1, 1, 6, 6, requires_grad=True)
    percentile_rescale(x, clip=False).sum().backward()
    assert x.grad is not None and torch.all(x.grad > 0)


def test_instance_normalize():
    f = instance_normalize(torch.randn(2, 3, 5, 6, 7) * 4 + 2)
    assert torch.allclose(f.mean(dim=(2, 3, 4)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(f.std(dim=(2, 3, 4), unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_package_exports():
    for name in ("FeatureExtractor", "create_extractor", "available_extractors", "register_extractor",
                 "MIND", "LocalEncoder", "ImageNetResNet18Stem"):
        assert hasattr(features, name)
