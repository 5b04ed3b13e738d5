"""Training on a device: validation on the model's device, checkpoint before validation, --resume.

Each test runs on CPU and, parametrised, on CUDA (skipped with a reason where no GPU is present)."""

import pytest
import torch

from unireg.models.registrar import load_registrar
from unireg.training import trainer as trainer_mod
from unireg.training.config import parse_config
from unireg.training.trainer import train

TINY = ["--ndim", "2", "--crop", "32", "40", "--enc", "4", "4", "4", "--dec", "4", "4", "--batch-size", "1",
        "--log-every", "1", "--threads", "1"]

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_validation_runs_on_the_model_device(tmp_path, device):
    out = tmp_path / "m.pt"
    train(parse_config(TINY + ["--steps", "2", "--out", str(out), "--val-pairs", "1", "--device", device]))
    model = load_registrar(out)
    assert model.meta["steps"] == 2
    assert 0.0 <= model.meta["validation"]["dice_after"] <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_is_written_before_validation(tmp_path, device, monkeypatch):
    out = tmp_path / "m.pt"

    def boom(*a, **k):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(trainer_mod, "validate", boom)
    with pytest.raises(RuntimeError, match="validation failed"):
        train(parse_config(TINY + ["--steps", "3", "--out", str(out), "--val-pairs", "1", "--device", device,
                                   "--checkpoint-every", "100"]))
    assert load_registrar(out).meta["steps"] == 3


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_device(tmp_path, device):
    out = tmp_path / "m.pt"
    train(parse_config(TINY + ["--steps", "2", "--out", str(out), "--val-pairs", "0", "--device", device]))
    train(parse_config(TINY + ["--steps", "4", "--out", str(out), "--val-pairs", "0", "--device", device, "--resume"]))
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    assert ckpt["extra"]["step"] == 4
    assert [h["step"] for h in ckpt["extra"]["history"]] == [1, 2, 3, 4]
    # the optimiser state lives with its parameters: one Adam step count per parameter, continued
    st = next(iter(ckpt["extra"]["optimizer"]["state"].values()))
    assert int(st["step"]) == 4
