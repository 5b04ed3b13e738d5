"""End-to-end tests of the registration job: the written warps are checked with ITK itself.

Every case registers a tiny synthetic pair with a tiny untrained registrar (``refine`` iterations do
the work), writes the outputs, and checks them against SimpleITK (``DisplacementFieldTransform`` +
``Resample``), against UniReg's own mapping, and against known ground truth.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from unireg import api
from unireg.io.image import write_image
from unireg.spatial.world import pull

from .synthetic_pairs import grid_affine, overlap_mask, phantom, rotation, tiny_registrar, world_points

torch.set_num_threads(1)


def _itk_resample(src_path, ref_path, warp_path) -> np.ndarray:
    """``src`` resampled onto ``ref``'s grid through the warp file, by ITK; array in UniReg order."""
    src = sitk.ReadImage(str(src_path), sitk.sitkFloat64)
    ref = sitk.ReadImage(str(ref_path), sitk.sitkFloat64)
    field = sitk.ReadImage(str(warp_path), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    out = sitk.GetArrayFromImage(sitk.Resample(src, ref, tx, sitk.sitkLinear, 0.0))
    return out


def _assert_interpolation_level(itk: np.ndarray, ours: np.ndarray, intensity_range: float, min_overlap=0.3):
    mask = overlap_mask(itk, ours)
    assert mask.mean() > min_overlap, f"overlap too small ({mask.mean():.2f})"
    diff = np.abs(itk - ours)[mask] / intensity_range
    assert np.median(diff) < 1e-3, np.median(diff)
    assert np.percentile(diff, 99) < 1e-2, np.percentile(diff, 99)


# ------------------------------------------------------------------------------------- 3-D oblique
CENTRE_3D = np.array([10.0, -20.0, 30.0])


@pytest.fixture(scope="module")
def oblique_3d(tmp_path_factory):
    """Fixed: oblique (17 deg about z, 10 deg about x), spacing (1.2, 1.0, 2.0), non-zero origin.
    Moving: other orientation, spacing and field of view, object shifted by (1.5, -1, 0.5) mm."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("oblique3d")
    fs, fa = (26, 30, 14), grid_affine((26, 30, 14), (1.2, 1.0, 2.0), rotation(2, 17) @ rotation(0, 10), CENTRE_3D)
    ms, ma = (24, 22, 20), grid_affine((24, 22, 20), (1.5, 1.4, 1.3), rotation(1, -12), CENTRE_3D + [1.0, 0.5, 0.0])
    f, _ = phantom(fs, fa, CENTRE_3D)
    m, _ = phantom(ms, ma, CENTRE_3D, shift=(1.5, -1.0, 0.5))
    write_image(d / "fixed.nii.gz", f, fa)
    write_image(d / "moving.nii.gz", m, ma)
    result = api.register(d / "fixed.nii.gz", d / "moving.nii.gz", model=tiny_registrar(3, 1.5), refine=5)
    out = d / "out"
    result.save(out, qc=False, html=False)
    return {"dir": d, "out": out, "result": result, "fixed": f, "moving": m, "fs": fs, "fa": fa, "ms": ms, "ma": ma}


def test_itk_forward_warp_matches_warped_oblique_3d(oblique_3d):
    c = oblique_3d
    itk = _itk_resample(c["dir"] / "moving.nii.gz", c["dir"] / "fixed.nii.gz", c["out"] / "warp.nii.gz")
    ours = nib.load(c["out"] / "warped.nii.gz").get_fdata()
    assert ours.shape == c["fs"]
    _assert_interpolation_level(itk.transpose(2, 1, 0), ours, float(np.ptp(c["moving"])))


def test_itk_inverse_warp_matches_own_inverse_mapping_3d(oblique_3d):
    c = oblique_3d
    inv = nib.load(c["out"] / "inverse_warp.nii.gz")
    assert inv.shape[:3] == c["ms"] and np.allclose(inv.affine, c["ma"], atol=1e-4)  # on the moving grid
    itk = _itk_resample(c["dir"] / "fixed.nii.gz", c["dir"] / "moving.nii.gz", c["out"] / "inverse_warp.nii.gz")
    mapping = c["result"].mapping
    ours = pull(torch.from_numpy(c["fixed"])[None], c["fa"], c["ms"], c["ma"],
                world_map=lambda w, rows: mapping.inverse(w))[0].numpy()
    _assert_interpolation_level(itk.transpose(2, 1, 0), ours, float(np.ptp(c["fixed"])))
    # and api.apply of the inverse file does the same resampling
    applied = api.apply(c["out"] / "inverse_warp.nii.gz", c["dir"] / "fixed.nii.gz", c["dir"] / "moving.nii.gz")
    _assert_interpolation_level(itk.transpose(2, 1, 0), applied.data[0], float(np.ptp(c["fixed"])))


def test_forward_inverse_point_round_trip_3d(oblique_3d):
    c = oblique_3d
    rng = np.random.default_rng(0)
    idx = np.stack([rng.uniform(3, n - 4, 300) for n in c["fs"]], 1)
    p = idx @ c["fa"][:3, :3].T + c["fa"][:3, 3]
    q = api.apply_points(c["out"] / "warp.nii.gz", p)
    assert np.linalg.norm(q - p, axis=1).max() > 0.5  # the map is not the identity
    back = api.apply_points(c["out"] / "inverse_warp.nii.gz", q)
    # the inverse warp lives on the moving grid: the round trip holds where q lies inside it (a voxel in)
    qv = (q - c["ma"][:3, 3]) @ np.linalg.inv(c["ma"][:3, :3]).T
    inside = np.all((qv >= 1) & (qv <= np.array(c["ms"]) - 2), axis=1)
    assert inside.mean() > 0.5
    err = np.linalg.norm(back - p, axis=1)[inside]
    assert np.median(err) < 0.1 and err.max() < 0.4, (np.median(err), err.max())  # voxels are 1-2 mm
    # the written field agrees with the pipeline's exact mapping up to field interpolation
    exact = c["result"].mapping.forward(torch.from_numpy(p.T.astype(np.float32)).view(3, -1, 1, 1))
    assert np.abs(exact.view(3, -1).numpy().T - q).max() < 0.25


def test_warp_file_layout(oblique_3d):
    img = nib.load(oblique_3d["out"] / "warp.nii.gz")
    assert img.shape == (*oblique_3d["fs"], 1, 3)
    assert int(img.header["intent_code"]) == 1007
    assert np.allclose(img.affine, oblique_3d["fa"], atol=1e-4)
    assert img.get_data_dtype() == np.float32


# ------------------------------------------------------------------------------------------- 2-D
def test_itk_cross_check_oblique_2d_nifti(tmp_path):
    centre = np.array([5.0, -7.0])
    r = lambda deg: rotation(2, deg)[:2, :2]  # noqa: E731
    fs, fa = (48, 56), grid_affine((48, 56), (0.9, 0.7), r(18), centre)
    ms, ma = (50, 44), grid_affine((50, 44), (0.8, 1.0), r(-5), centre + [1.0, 0.0])
    f, _ = phantom(fs, fa, centre)
    m, _ = phantom(ms, ma, centre, shift=(1.5, -1.0))
    write_image(tmp_path / "f.nii.gz", f, fa)
    write_image(tmp_path / "m.nii.gz", m, ma)
    res = api.register(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", model=tiny_registrar(2, 0.8), refine=5)
    res.save(tmp_path / "out", qc=False, html=False)
    warp = nib.load(tmp_path / "out" / "warp.nii.gz")
    assert warp.shape == (*fs, 1, 1, 2) and int(warp.header["intent_code"]) == 1007
    itk = _itk_resample(tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", tmp_path / "out" / "warp.nii.gz").T
    ours = nib.load(tmp_path / "out" / "warped.nii.gz").get_fdata()
    _assert_interpolation_level(itk, ours, float(np.ptp(m)))
    itk_inv = _itk_resample(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", tmp_path / "out" / "inverse_warp.nii.gz").T
    own_inv = api.apply(tmp_path / "out" / "inverse_warp.nii.gz", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz").data[0]
    _assert_interpolation_level(itk_inv, own_inv, float(np.ptp(f)))
    p = world_points(fs, fa)[::37]
    back = api.apply_points(tmp_path / "out" / "inverse_warp.nii.gz", api.apply_points(tmp_path / "out" / "warp.nii.gz", p))
    assert np.median(np.linalg.norm(back - p, axis=1)) < 0.1


def test_itk_cross_check_png(tmp_path):
    yy, xx = np.mgrid[0:48, 0:56].astype(float)

    def blob(cy, cx, r):
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))

    f = (200 * (blob(24, 28, 9) + 0.7 * blob(14, 40, 4))).astype(np.uint8)
    m = (200 * (blob(26, 30, 9) + 0.7 * blob(16, 42, 4)))[:, 3:].astype(np.uint8)  # other FOV
    sitk.WriteImage(sitk.GetImageFromArray(f), str(tmp_path / "f.png"))
    sitk.WriteImage(sitk.GetImageFromArray(m), str(tmp_path / "m.png"))
    res = api.register(tmp_path / "f.png", tmp_path / "m.png", model=tiny_registrar(2, 1.0), refine=5)
    res.save(tmp_path / "out", qc=False, html=False)
    itk = _itk_resample(tmp_path / "m.png", tmp_path / "f.png", tmp_path / "out" / "warp.nii.gz")  # (row, col)
    ours = nib.load(tmp_path / "out" / "warped.nii.gz").get_fdata()
    assert ours.shape == f.shape
    _assert_interpolation_level(itk, ours, 200.0)


# ------------------------------------------------------------------------------------ translation
def test_pure_translation_recovered(tmp_path):
    """Moving = fixed shifted by a known world translation: affine, warp and Dice all find it."""
    sp, shape = 1.5, (24, 24, 24)
    a = np.diag([sp, sp, sp, 1.0])
    a[:3, 3] = -(np.array(shape) - 1) / 2 * sp + [0.3, -0.2, 0.1]
    t = np.array([3.0, -2.25, 1.5])
    f, fl = phantom(shape, a, (0, 0, 0))
    m, ml = phantom(shape, a, (0, 0, 0), shift=t)
    # one big blob label (Dice of 2-voxel-radius blobs is too sensitive to sub-voxel error)
    fl, ml = (fl == 1).astype(np.uint8), (ml == 1).astype(np.uint8)
    for name, arr in [("f", f), ("m", m), ("fl", fl), ("ml", ml)]:
        write_image(tmp_path / f"{name}.nii.gz", arr, a)
    res = api.register(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", model=tiny_registrar(3, sp),
                       labels=tmp_path / "ml.nii.gz", fixed_labels=tmp_path / "fl.nii.gz", refine=0)
    res.save(tmp_path / "out", qc=False, html=False)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    T = np.array(rep["affine_matrix"])
    w = world_points(shape, a)
    inside = np.linalg.norm(w, axis=1) < 12  # the object
    err = np.linalg.norm(w[inside] @ T[:3, :3].T + T[:3, 3] - (w[inside] + t), axis=1)
    assert err.max() < 0.5 * sp * 1.5 and err.mean() < 0.5 * sp, (err.max(), err.mean())
    disp = np.asarray(nib.load(tmp_path / "out" / "warp.nii.gz").dataobj)[:, :, :, 0, :].reshape(-1, 3)
    disp = disp * [-1, -1, 1]  # LPS on disk -> RAS
    e2 = np.linalg.norm(disp[inside] - t, axis=1)
    assert np.median(e2) < 0.5 * sp, np.median(e2)
    assert rep["dice_before"]["mean"] < 0.75
    assert rep["dice"]["mean"] > 0.9, rep["dice"]


def test_identity_pair_gives_near_zero_warp():
    """Fixed == moving, no affine, no refinement, untrained (near-zero) head: warp ~ 0, warped ~ fixed."""
    shape = (20, 22, 18)
    a = grid_affine(shape, (1.2, 1.0, 1.5), rotation(2, 15), (0, 0, 0))
    f, _ = phantom(shape, a, (0, 0, 0))
    res = api.register((f, a), (f, a), model=tiny_registrar(3, 1.5), affine=False, refine=0)
    assert np.abs(res.warp_mm).max() < 1e-3
    assert np.abs(res.warped.data[0] - f).max() < 1e-3 * np.ptp(f)
    assert res.report["folded_percent"] == 0.0
    assert np.allclose(res.jacobian, 1.0, atol=1e-3)


# ------------------------------------------------------------------------------------ overfitting
def test_tiny_unet_overfits_one_pair():
    """A tiny UNet trained on one synthetic 2-D pair (known smooth deformation): loss halves, Dice rises."""
    from unireg.data.synth import deform_pair_field, random_velocity
    from unireg.evaluation.metrics import dice
    from unireg.spatial.grid import warp
    from unireg.training.config import TrainConfig
    from unireg.training.trainer import losses_for_batch

    torch.manual_seed(0)
    shape = (48, 56)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 1, 12, 14), generator=g)
    structure = torch.nn.functional.interpolate(noise, size=shape, mode="bicubic", align_corners=True)
    yy, xx = torch.meshgrid(torch.arange(shape[0]).float(), torch.arange(shape[1]).float(), indexing="ij")
    blob = ((yy - 24) ** 2 / 12**2 + (xx - 28) ** 2 / 15**2 < 1).float()
    fixed = (0.3 * structure + blob)[0, 0]
    fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min()))[None, None]
    labels = torch.stack([1 - blob, blob])[None]  # (1, 2, H, W) one-hot
    v = random_velocity((12, 14), max_disp_vox=4.0 * 11 / 47, seed=1)  # ~4 voxels at full size
    _, pull_field = deform_pair_field(v, shape)
    moving = warp(fixed, pull_field)
    moving_labels = warp(labels, pull_field)

    reg = tiny_registrar(2, 1.0)
    cfg = TrainConfig(ndim=2, similarity="feature", dice_weight=0.0)
    batch = {"fixed": fixed, "moving": moving}
    lam = torch.tensor([0.1])
    opt = torch.optim.Adam(reg.unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        terms = losses_for_batch(reg, reg.unet, batch, lam, cfg)
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        vel = reg(reg.extract(fixed), reg.extract(moving), 0.1)
        disp = reg.displacement(vel, shape)
        warped_lab = warp(moving_labels, disp).argmax(1)[0].numpy()
    fixed_lab = labels.argmax(1)[0].numpy()
    before = dice(fixed_lab, moving_labels.argmax(1)[0].numpy())[1]
    after = dice(fixed_lab, warped_lab)[1]
    assert after > before + 0.05 and after > 0.97, (before, after)


# ------------------------------------------------------------------------------------ MNI (slow)
@pytest.mark.slow
def test_mni_demo_pair_grey_white_dice_rises(tmp_path):
    from unireg.demo import make_demo_pair

    paths = make_demo_pair(tmp_path, contrast="t2", spacing=2.0)
    res = api.register(paths["fixed"], paths["moving"], labels=paths["moving_labels"],
                       fixed_labels=paths["fixed_labels"])
    rep = res.report
    assert rep["dice"]["mean"] > rep["dice_before"]["mean"] + 0.01, (rep["dice"], rep["dice_before"])
    assert rep["folded_percent"] < 0.1
