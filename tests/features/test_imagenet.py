"""ImageNet ResNet-18 stem: torchvision key compatibility, loading from a local file, errors, shapes."""

import pytest
import torch

from unireg.errors import UniRegError
from unireg.features import ImageNetResNet18Stem, create_extractor

torch.set_num_threads(1)


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet18_shapes() -> dict:
    """torchvision.models.resnet18().state_dict() keys and shapes, written out by hand."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    c_in = 64
    for layer, c in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            first_in = c_in if block == 0 else c
            shapes[f"{p}.conv1.weight"] = (c, first_in, 3, 3)
            shapes.update(_bn(f"{p}.bn1", c))
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            shapes.update(_bn(f"{p}.bn2", c))
            if block == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", c))
        c_in = c
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


TORCHVISION_RESNET18_KEYS = set(torchvision_resnet18_shapes())


def random_resnet18_state_dict(seed: int = 0, with_num_batches_tracked: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in torchvision_resnet18_shapes().items():
        if k.endswith("num_batches_tracked"):
            if with_num_batches_tracked:
                sd[k] = torch.tensor(100, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet") / "resnet18-random.pth"
    torch.save(random_resnet18_state_dict(), path)
    return path


def test_hand_written_key_list_is_resnet18():
    assert len(TORCHVISION_RESNET18_KEYS) == 122  # 62 params + 40 BN buffers + 20 num_batches_tracked
    n_params = sum(torch.Size(s).numel() for k, s in torchvision_resnet18_shapes().items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == 11_689_512  # torchvision's documented resnet18 parameter count


def test_state_dict_keys_are_torchvision_keys(weights_path):
    ext = ImageNetResNet18Stem(ndim=2, weights=weights_path)
    keys = set(ext.state_dict())
    assert keys <= TORCHVISION_RESNET18_KEYS
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias"} <= keys
    assert not any(k.startswith(("layer2", "fc")) for k in keys)


def test_loads_the_saved_values_and_ignores_extra_keys(weights_path):
    saved = torch.load(weights_path, weights_only=True)
    ext = create_extractor("imagenet", ndim=2, weights=str(weights_path))
    for k, v in ext.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_old_style_file_without_num_batches_tracked_loads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"state_dict": random_resnet18_state_dict(1, with_num_batches_tracked=False)}, path)
    ext = ImageNetResNet18Stem(ndim=2, weights=path)
    assert ext(torch.rand(1, 1, 9, 9)).shape == (1, 64, 9, 9)


def test_missing_key_is_a_user_error_naming_file_and_key(tmp_path):
    sd = random_resnet18_state_dict()
    del sd["layer1.1.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(UniRegError) as exc:
        create_extractor("imagenet", ndim=2, weights=path)
    assert str(path) in str(exc.value) and "layer1.1.conv2.weight" in str(exc.value)


def test_wrong_shape_is_a_user_error(tmp_path):
    sd = random_resnet18_state_dict()
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "grey.pth"
    torch.save(sd, path)
    with pytest.raises(UniRegError, match="conv1.weight"):
        ImageNetResNet18Stem(ndim=2, weights=path)


def test_missing_file_and_missing_weights_are_user_errors(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(UniRegError) as exc:
        create_extractor("imagenet", ndim=3, weights=path)
    assert str(path) in str(exc.value)
    with pytest.raises(UniRegError, match="torchvision"):
        create_extractor("imagenet", ndim=2)


@pytest.mark.parametrize("shape", [(17, 23), (8, 8), (7, 10, 5), (6, 5, 9)])
def test_output_shape_equals_input_shape(weights_path, shape):
    ext = ImageNetResNet18Stem(ndim=len(shape), weights=weights_path, slice_batch=2)
    out = ext(torch.rand((2, 1) + shape))
    assert out.shape == (2, 64) + shape
    assert torch.isfinite(out).all()
    # per-channel instance normalisation
    assert torch.allclose(out.mean(dim=tuple(range(2, out.dim()))), torch.zeros(2, 64), atol=1e-4)


def test_channels_option_keeps_the_first_channels(weights_path):
    full = ImageNetResNet18Stem(ndim=2, weights=weights_path)
    some = ImageNetResNet18Stem(ndim=2, weights=weights_path, channels=16)
    assert some.out_channels == 16
    x = torch.rand(1, 1, 12, 13)
    assert torch.allclose(some(x), full(x)[:, :16], atol=1e-5)
    with pytest.raises(UniRegError):
        ImageNetResNet18Stem(ndim=2, weights=weights_path, channels=65)


def test_3d_is_slice_wise_along_the_last_axis(weights_path):
    ext = ImageNetResNet18Stem(ndim=3, weights=weights_path, slice_batch=3)
    slice2d = torch.rand(1, 1, 9, 11)
    slice2d[..., :2, :], slice2d[..., -2:, :] = 0.0, 1.0  # exact 1st/99th percentiles in 2-D and 3-D
    vol = slice2d[..., None].expand(-1, -1, -1, -1, 7).contiguous()
    out = ext(vol)
    assert torch.allclose(out, out[..., :1].expand_as(out), atol=1e-5)
    ext2 = ImageNetResNet18Stem(ndim=2, weights=weights_path)
    assert torch.allclose(out[..., 0], ext2(slice2d), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_frozen_and_gradient_reaches_the_input(weights_path, ndim):
    ext = ImageNetResNet18Stem(ndim=ndim, weights=weights_path)
    assert not ext.training
    image = torch.rand((1, 1) + ((8, 9, 5) if ndim == 3 else (13, 12)), requires_grad=True)
    ext(image).square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in ext.parameters())
    before = ext.bn1.running_mean.clone()
    ext.train()
    assert not ext.training and not ext.bn1.training and not ext.layer1[0].bn2.training
    ext(torch.rand(2, 1, *image.shape[2:]))
    assert torch.equal(ext.bn1.running_mean, before)


def test_intensity_affine_invariance(weights_path):
    ext = ImageNetResNet18Stem(ndim=2, weights=weights_path)
    x = torch.rand(1, 1, 16, 15)
    assert torch.allclose(ext(x), ext(250.0 * x + 30.0), atol=1e-3)
