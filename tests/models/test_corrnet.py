import itertools

import pytest
import torch
import torch.nn.functional as F

from unireg.errors import UniRegError
from unireg.models.corrnet import CorrNet, local_cost
from unireg.models.registrar import Registrar, load_registrar
from unireg.models.unet import UNet


def test_cost_volume_finds_a_known_shift():
    torch.manual_seed(0)
    f = F.avg_pool3d(torch.rand(1, 4, 20, 20, 20), 3, 1, 1)
    m = torch.roll(f, shifts=1, dims=2)  # m(x) = f(x - e0): best offset d = +e0 (m(x + d) = f(x))
    c = local_cost(f, m, 2)
    best = list(itertools.product(range(-2, 3), repeat=3)).index((1, 0, 0))
    assert (c[0, :, 4:16, 4:16, 4:16].argmax(0) == best).float().mean() > 0.95


@pytest.mark.parametrize("shape", [(32, 32, 32), (27, 35, 22)])
def test_velocity_grid_matches_the_unet(shape):
    reg = Registrar(3, unet={"arch": "corr", "width": [8, 8, 8]})
    x = torch.rand(1, 1, *shape)
    v = reg(reg.extract(x), reg.extract(x), 1.0)
    u = Registrar(3, unet={"enc": [4, 4, 4, 4], "dec": [4, 4, 4]})
    assert v.shape == u(u.extract(x), u.extract(x), 1.0).shape
    assert reg.displacement(v, shape).shape == (1, 3, *shape)


def test_corr_checkpoint_round_trip_and_old_checkpoints(tmp_path):
    reg = Registrar(2, unet={"arch": "corr", "width": [8, 8, 8], "out_scale": 0.5}, trained=True)
    reg.save(tmp_path / "c.pt")
    back = load_registrar(tmp_path / "c.pt")
    assert isinstance(back.unet, CorrNet) and back.unet.out_scale == 0.5
    assert all(torch.equal(a, b) for a, b in zip(reg.unet.state_dict().values(), back.unet.state_dict().values()))
    old = Registrar(2, unet={"enc": [4, 4, 4, 4], "dec": [4, 4, 4]})  # checkpoints without "arch": the UNet
    ck = old.checkpoint()
    ck["config"]["unet"].pop("arch", None)
    torch.save(ck, tmp_path / "old.pt")
    assert isinstance(load_registrar(tmp_path / "old.pt").unet, UNet)
    ck["config"]["unet"]["arch"] = "transformer"
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(UniRegError, match="unknown deformation network"):
        load_registrar(tmp_path / "bad.pt")
