import ast
import pathlib

import pytest
import torch

from unireg.spatial.grid import warp
from unireg.training.synth_torch import TorchPairSynthesizer

TRAINING = pathlib.Path(__file__).resolve().parents[2] / "src" / "unireg" / "training"


@pytest.fixture(scope="module")
def synth3():
    return TorchPairSynthesizer(3, 4.0, [24, 24, 24], device="cpu", label_stride=1)


def test_batch_shapes_ranges_and_purity(synth3):
    a, b = synth3.batch([3, 4]), synth3.batch([3, 4])
    assert a["fixed"].shape == (2, 1, 24, 24, 24) and a["fixed_labels"].shape == (2, 3, 24, 24, 24)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["fixed"].min()) >= 0 and float(a["fixed"].max()) <= 1
    assert float(a["fixed_labels"].sum(1).min()) >= 0.999  # background completes GM + WM
    assert not torch.equal(synth3.batch([5])["moving"], a["moving"][:1])


def test_zero_relative_transform_gives_identical_geometry():
    s = TorchPairSynthesizer(3, 4.0, [24, 24, 24], max_disp_mm=0.0, rel_rot_deg=0, rel_scale=0, rel_shear=0,
                             rel_trans_mm=0, label_stride=1)
    b = s.batch([1])
    assert torch.allclose(b["fixed_labels"], b["moving_labels"], atol=1e-4)


def test_relative_field_is_nontrivial_and_labels_at_half_resolution():
    s = TorchPairSynthesizer(3, 4.0, [24, 24, 24], label_stride=2)
    b = s.batch([1, 2])
    assert b["fixed_labels"].shape[2:] == (12, 12, 12) and b["fixed"].shape[2:] == (24, 24, 24)
    assert (b["fixed_labels"] - b["moving_labels"]).abs().mean() > 1e-3


def test_2d_planes():
    s = TorchPairSynthesizer(2, 2.0, [48, 56], label_stride=1)
    b = s.batch([0, 1, 2])
    assert b["moving"].shape == (3, 1, 48, 56) and b["moving_labels"].shape == (3, 3, 48, 56)
    assert float(b["fixed"].std()) > 0.05


def test_training_code_never_imports_evaluation():
    for path in TRAINING.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "evaluation" not in mod, f"{path.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("unireg.evaluation" in a.name for a in node.names), path.name


def test_moving_contrast_override_changes_only_moving(synth3):
    a, b = synth3.batch([7]), synth3.batch([7], moving_contrast="t2")
    assert torch.equal(a["fixed"], b["fixed"]) and not torch.equal(a["moving"], b["moving"])
    assert torch.equal(a["moving_labels"], b["moving_labels"])


@pytest.mark.parametrize(("ndim", "crop", "stride"), [(3, [24, 20, 22], 2), (3, [16, 16, 16], 1), (2, [40, 36], 1)])
def test_cpu_mosaic_path_makes_the_pairs_grid_sample_makes(ndim, crop, stride):
    """On the CPU the template and the squarings are sampled through spatial.mosaic; elsewhere (a GPU)
    through grid_sample: both must give the same pairs (the trained model saw the latter's)."""
    spacing = 4.0 if ndim == 3 else 2.0
    fast = TorchPairSynthesizer(ndim, spacing, crop, contrasts=("t1", "t2"), label_stride=stride, invert=0.5)
    ref = TorchPairSynthesizer(ndim, spacing, crop, contrasts=("t1", "t2"), label_stride=stride, invert=0.5)
    ref.use_mosaic = False
    assert fast.use_mosaic
    a, b = fast.batch(range(7, 11)), ref.batch(range(7, 11))
    for k in a:
        assert a[k].shape == b[k].shape
        assert (a[k] - b[k]).abs().mean() < 1e-4 and (a[k] - b[k]).abs().max() < 2e-2, k
