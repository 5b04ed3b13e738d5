import os
import subprocess
import sys

import pytest
import torch

from unireg.models.registrar import load_registrar
from unireg.training.config import parse_config
from unireg.training.dataset import PairSynthesizer
from unireg.training.trainer import train

TINY = ["--ndim", "2", "--crop", "48", "56", "--enc", "8", "8", "8", "--dec", "8", "8", "--batch-size", "2",
        "--log-every", "1", "--val-pairs", "1", "--threads", "1"]


def test_config_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("ndim: 2\nsteps: 7\nlr: 0.01\n")
    cfg = parse_config(["--config", str(cfg_file), "--steps", "9"])
    assert cfg.ndim == 2 and cfg.steps == 9 and cfg.lr == 0.01 and len(cfg.crop) == 2


def test_config_unknown_field_is_user_error(tmp_path):
    from unireg.errors import UniRegError

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("ndim: 2\nstepz: 7\n")
    with pytest.raises(UniRegError, match="stepz"):
        parse_config(["--config", str(cfg_file)])


def test_pairs_are_pure_functions_of_the_seed():
    s = PairSynthesizer(2, 2.0, [40, 48], 8.0, ["t1", "t2"], 0.2, 0.02, 4.0, 0.04, 3.0)
    a, b = s.pair(5), s.pair(5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(s.pair(6)["moving"], a["moving"])
    assert s.pair(5, moving_contrast="ct")["moving"].shape == a["moving"].shape


def test_train_checkpoint_carries_config_and_resumes(tmp_path):
    out = tmp_path / "m.pt"
    cfg = parse_config(TINY + ["--steps", "3", "--out", str(out), "--checkpoint-every", "2"])
    train(cfg)
    model = load_registrar(out)
    assert model.trained and model.ndim == 2 and model.meta["steps"] == 3
    assert model.meta["train_config"]["crop"] == [48, 56]
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["extra"]["step"] == 3 and len(ckpt["extra"]["history"]) == 3
    # --resume continues from step 3 to 5 with the optimizer state
    cfg2 = parse_config(TINY + ["--steps", "5", "--out", str(out), "--resume"])
    train(cfg2)
    ckpt2 = torch.load(out, weights_only=False)
    assert ckpt2["extra"]["step"] == 5 and [h["step"] for h in ckpt2["extra"]["history"]] == [1, 2, 3, 4, 5]


def test_unireg_train_cli(tmp_path):
    from typer.testing import CliRunner

    from unireg.cli.main import app

    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(app, ["train", *TINY, "--steps", "2", "--out", str(out), "--val-pairs", "0"])
    assert res.exit_code == 0, res.output
    assert load_registrar(out).meta["steps"] == 2


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "unireg.training", *TINY, "--steps", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    model = load_registrar(out)
    assert model.meta["steps"] == 4
    # the logged throughput counts both ranks' samples
    assert "checkpoint:" in proc.stdout
