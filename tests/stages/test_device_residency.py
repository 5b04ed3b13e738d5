"""The GPU-resident stages (``features``, ``network``, ``refine``, ``integrate``, the polish's loop) never copy a tensor
to the host (issue #12): a CPU-only CI catches a planted ``.cpu()`` / ``.item()`` / ``.numpy()`` /
``.tolist()`` / ``.to("cpu")`` because the mode below flags those METHOD CALLS whatever the device
(on a CPU everything is "host", so the device cannot tell a transfer apart), plus implicit scalar
reads (``int(t)``, ``float(t)``, ``bool(t)``: ``aten._local_scalar_dense``).

Allow-listed, on purpose: :func:`unireg.align.refine.mind_cost`, the do-no-harm yardstick, which
returns one Python float per gate (one scalar read per stage, the gate's comparison needs it), and
:func:`unireg.spatial.smooth.gaussian_kernel1d`, whose weights are computed on the host from a Python float.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from unireg.data.mni import load_mni
from unireg.models.registrar import Registrar
from unireg.stages import Options, State, deformable
from unireg.align import refine as refine_mod
from unireg.stages.affine import affine as affine_stage
from unireg.stages.prepare import prepare

# the do-no-harm gates' one scalar each (see module docstring); a Gaussian's weights, made on the host from a
# Python float (no device data in them: spatial.smooth.gaussian_kernel1d)
ALLOWED_FUNCTIONS = {"mind_cost", "gaussian_kernel1d"}
_FLAGGED = {"cpu", "numpy", "item", "tolist"}


class HostTransfer(AssertionError):
    pass


def _allowed() -> bool:
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_name in ALLOWED_FUNCTIONS:
            return True
        f = f.f_back
    return False


def _to_host(args, kwargs) -> bool:
    targets = list(args[1:]) + [kwargs.get("device")]
    return any(isinstance(t, str) and t.startswith("cpu") for t in targets)


class NoHostTransfer(TorchFunctionMode):
    """Raises on Tensor.cpu/numpy/item/tolist and ``.to("cpu")`` (an explicit host target)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (name in _FLAGGED or (name == "to" and _to_host(args, kwargs))) and not _allowed():
            raise HostTransfer(f"device-to-host transfer: Tensor.{name}")
        return func(*args, **kwargs)


class NoScalarRead(TorchDispatchMode):
    """Raises on implicit scalar reads (int(t), float(t), bool(t), if t: ...)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not _allowed():
            raise HostTransfer("device-to-host transfer: scalar read (int/float/bool of a tensor)")
        return func(*args, **(kwargs or {}))


def build_state(device: str = "cpu") -> State:
    from unireg.io.image import Image

    mni = load_mni(4.0)
    t1, aff = mni["t1"].data[0], mni["t1"].affine
    rng = np.random.default_rng(0)
    mov = (np.roll(t1, 2, axis=0) * 0.8 + rng.normal(0, 0.01, t1.shape)).astype(np.float32)
    fixed, moving = Image(t1[None], aff, None), Image(mov[None], aff, None)
    model = Registrar(ndim=3).to(device).eval()
    opts = Options(refine=3, device=device)
    s = State(fixed, moving, model, opts, torch.device(device))
    prepare(s)
    affine_stage(s)
    return s


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device on this machine"))]


@pytest.mark.parametrize("device", DEVICES)
def test_deformable_stages_stay_on_the_device(device, monkeypatch):
    monkeypatch.setitem(refine_mod.POLISH_WEIGHT, 3, 0.03)  # on, so that the refinement keeps its finest level
    s = build_state(device)
    with NoHostTransfer(), NoScalarRead():
        for stage in (deformable.features, deformable.network, deformable.refine, deformable.integrate):
            stage(s)
        assert s.finest is not None
        # the polish's iterations (the finest level with intensity MI)
        v = refine_mod.polish(s.velocity, s.finest, iterations=3, weight=0.05)
    assert s.disp_w.device.type == torch.device(device).type
    assert v.device.type == torch.device(device).type and not torch.equal(v, s.velocity)


@pytest.mark.parametrize("device", DEVICES)
def test_preprocessing_stays_on_the_device(device):
    """``prepare`` (normalisation, anti-aliasing, pull onto the working grid) and the moving image's pulls
    through an affine run where the registration runs: each image crosses to the device once, as read
    (a few scalar reads, the percentiles' checks, are allowed: no volume comes back)."""
    from unireg.io.image import Image
    from unireg.stages.prepare import moving_on

    mni = load_mni(2.0)
    t1, aff = mni["t1"].data[0], mni["t1"].affine
    mask = Image((t1 > 0.1)[None].astype(np.uint8), aff, None)
    opts = Options(refine=3, device=device, fixed_mask=mask)
    g = np.random.default_rng(0)  # a noisy moving image: its smoothing (unireg.noise) runs on the device too
    noisy = np.hypot(np.roll(t1, 2, axis=0) + g.normal(0, 0.15, t1.shape), g.normal(0, 0.15, t1.shape))
    s = State(Image(t1[None], aff, None), Image(noisy[None].astype(np.float32), aff, None),
              Registrar(ndim=3).to(device).eval(), opts, torch.device(device))
    with NoHostTransfer():
        prepare(s)
        moved = moving_on(s, s.w_shape, s.w_aff4, np.eye(4))
    for t in (s.fixed_n, s.moving_n, s.fixed_w, moved):
        assert t.device.type == torch.device(device).type
    assert s.fixed_n.shape == t1.shape and float(s.fixed_n.max()) == 1.0
    assert s.noise["fixed"]["sigma_vox"] == 0 and s.noise["moving"]["sigma_vox"] > 0, s.noise


def test_the_mode_catches_a_planted_transfer(monkeypatch):
    """The guard itself: a stage that reads a scalar or copies to the host fails."""
    s = build_state()
    deformable.features(s)
    deformable.network(s)
    real = deformable.refine_multilevel

    def planted(v, *a, **k):
        return real(v, *a, **k).cpu()

    monkeypatch.setattr(deformable, "refine_multilevel", planted)
    with pytest.raises(HostTransfer, match="Tensor.cpu"), NoHostTransfer(), NoScalarRead():
        deformable.refine(s)
    for bad in (lambda t: t.item(), lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t.to("cpu"),
                lambda t: float(t.sum())):
        with pytest.raises(HostTransfer), NoHostTransfer(), NoScalarRead():
            bad(torch.ones(1))


class Crossings(TorchFunctionMode):
    """Counts, by kind, what crosses between host and device (whatever the device, as above): reads
    (Tensor.cpu/numpy/item/tolist, float/int/bool of a tensor, ``.to`` with a device) and host data
    sent to a device (``torch.tensor`` / ``torch.as_tensor`` with a device)."""

    def __init__(self):
        super().__init__()
        self.n: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _FLAGGED or name in ("__float__", "__int__", "__bool__", "__index__"):
            self.n["read " + name] += 1
        elif name == "to" and any(isinstance(t, (str, torch.device)) for t in [*args[1:], kwargs.get("device")]):
            self.n["to(device)"] += 1
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            self.n["host data " + name] += 1
        return func(*args, **kwargs)


class ScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def _crossings(fn) -> Counter:
    with Crossings() as c, ScalarReads() as r:
        fn()
    return c.n + Counter({"scalar reads": r.n})


@pytest.mark.parametrize("device", DEVICES)
def test_the_affine_loops_do_not_cross_to_the_host_per_step(device):
    """``mi_affine``, ``optimize_affine`` and ``polish_affine`` (issue: on an H200 the affine stage was
    bound by per-step syncs): what crosses between host and device per call does not grow with the
    steps (per call and per level only; each blocking copy or read waits for the GPU's queue)."""
    from unireg.align import affine as al
    from unireg.features.mind import mind_ssc

    mni = load_mni(4.0)
    t1, aff = mni["t1"].data[0], np.asarray(mni["t1"].affine, dtype=np.float64)
    fix = torch.from_numpy(t1).to(device)
    mov = torch.from_numpy(np.roll(t1, 2, axis=0) * 0.8).to(device)
    mmask = mov > 0.05
    init = np.eye(4)
    init[:3, 3] = [2.0, -1.0, 1.0]
    with torch.no_grad():
        ff, fm = mind_ssc(fix[None, None]), mind_ssc(mov[None, None])

    def calls(it: int) -> dict:
        loops = {
            "mi_affine": lambda: al.mi_affine(
                fix, aff, mov, aff, init, levels=((2, it), (1, it)), points=2000, bins=8, moving_mask=mmask
            ),
            "optimize_affine": lambda: al.optimize_affine(
                ff, aff, fm, aff, np.stack([init] * 3), levels=((2, it),), moving_mask=mmask
            ),
            "polish_affine": lambda: al.polish_affine(
                ff, aff, fm, aff, init, iterations=it, points=2000, moving_mask=mmask
            ),
        }
        with torch.enable_grad():
            return {name: _crossings(fn) for name, fn in loops.items()}

    calls(2)  # a first call keeps what it may (the sampling grids' scales)
    few, many = calls(4), calls(16)
    for name in few:
        assert few[name] == many[name], (name, few[name], many[name])
        assert few[name]["scalar reads"] <= 8, (name, few[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_register_on_cuda_matches_cpu():
    """api.register on ``cuda``: same outputs and failure score as on the CPU (within float tolerance), masks
    and label resampling included, the caller's model left where it was."""
    from unireg import api

    mni = load_mni(4.0)
    t1, lab, aff = mni["t1"].data[0][:, :, 20], mni["labels"].data[0][:, :, 20], mni["t1"].affine
    mov = np.roll(t1, 2, axis=0).astype(np.float32)
    from unireg.io.image import Image

    model = Registrar(ndim=2).eval()
    body = ((t1 > 0.05 * t1.max()).astype(np.uint8), aff)
    res = {d: api.register((t1, aff), (mov, aff), model=model, labels=Image(lab[None], aff, None), device=d,
                           fixed_mask=body, moving_mask=body) for d in ("cpu", "cuda")}
    assert abs(res["cuda"].report["qc_score"] - res["cpu"].report["qc_score"]) < 0.02
    assert next(model.parameters()).device.type == "cpu"
    assert np.abs(res["cuda"].warp_mm - res["cpu"].warp_mm).max() < 0.05  # mm
    assert (res["cuda"].warped_labels.data != res["cpu"].warped_labels.data).mean() < 0.01
