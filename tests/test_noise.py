"""unireg.noise: the SNR read from an image's voxels, the smoothing it calls for, and what it does to a noisy pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unireg import api, noise
from unireg.data.mni import load_mni
from unireg.data.synth import coarse_shape, deform_pair_field, random_velocity, remap_contrast
from unireg.evaluation.metrics import dice
from unireg.io.image import Image
from unireg.spatial.grid import warp
from unireg.spatial.smooth import gaussian_filter


def _mni_slice(z: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mni = load_mni(None)
    return mni["t1"].data[0][:, :, z].astype(np.float32), mni["labels"].data[0][:, :, z], mni["t1"].affine


def _with_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return (img + np.random.default_rng(seed).normal(0.0, sigma, img.shape)).astype(np.float32)


@pytest.mark.parametrize("true_snr", [3.0, 6.0, 12.0])
def test_snr_reads_the_noise_added_to_real_anatomy(true_snr):
    """Gaussian noise of a known sigma on the 2 mm MNI T1 (3-D and a slice): the estimate is within 20 % of the
    object's median over that sigma (the anatomy's own edges and texture barely count: the noise-free T1 reads >
    50, four times the 3-D threshold)."""
    mni = load_mni(2.0)
    for img in (mni["t1"].data[0], mni["t1"].data[0][:, :, 45]):
        img = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        clean = noise.snr(img)
        assert clean is not None and clean > 50
        inside = img > float(img.max()) * 0.05
        signal = float(img[inside].median())
        noisy = torch.from_numpy(_with_noise(img.numpy(), signal / true_snr, seed=1))
        est = noise.snr(noisy)
        assert est is not None and abs(est / true_snr - 1) < 0.2, (img.dim(), true_snr, est)


def test_snr_of_noise_free_flat_data_is_infinite_and_tiny_images_have_none():
    img = torch.zeros(64, 64)
    img[10:50, 12:52] = 1.0
    assert noise.snr(img) == math.inf
    assert noise.snr(torch.ones(1, 40)) is None
    assert noise.snr(torch.rand(8, 8)) is None  # too few object voxels for an estimate


def test_the_background_must_confirm_the_noise():
    """Voxel-scale texture inside the object reads as noise to the Haar estimate (coarse voxels, where neighbours
    differ by anatomy); a clean background (Rayleigh noise at 1 % of the object) overrules it, a noisy one does not,
    and a masked (zero) background cannot confirm either way."""
    g = np.random.default_rng(0)
    shape = (48, 48, 40)
    zz, yy, xx = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    ball = (zz / 20) ** 2 + (yy / 20) ** 2 + (xx / 16) ** 2 < 1
    texture = np.where(ball, g.uniform(0.4, 1.0, shape), 0.0)

    def rayleigh(sigma):
        return np.hypot(g.normal(0, sigma, shape), g.normal(0, sigma, shape))

    quiet = torch.from_numpy(np.where(ball, texture, rayleigh(0.01)).astype(np.float32))
    haar = noise.snr(quiet)
    assert haar is not None and haar < noise.NOISY_SNR[3]  # the texture reads as noise ...
    assert noise.background_snr(quiet) > 5 * noise.NOISY_SNR[3]  # ... the background says it is not
    assert noise.denoise(quiet, (4.0, 4.0, 5.0))[1]["sigma_vox"] == 0.0
    loud = torch.from_numpy(np.where(ball, texture + g.normal(0, 0.2, shape), rayleigh(0.2)).astype(np.float32))
    assert noise.background_snr(loud) < noise.NOISY_SNR[3]
    assert noise.denoise(loud, (1.0, 1.0, 1.0))[1]["sigma_vox"] > 0
    masked = torch.from_numpy(np.where(ball, texture, 0.0).astype(np.float32))
    assert noise.background_snr(masked) is None


def test_the_smoothing_is_capped_in_mm_on_coarse_voxels():
    assert noise.smoothing_sigma(2.0, 3, finest_mm=1.0) == noise.MAX_SIGMA_VOX
    coarse = noise.smoothing_sigma(2.0, 3, finest_mm=4.0)
    assert 0 < coarse <= noise.MAX_SIGMA_MM / 4.0
    assert noise.smoothing_sigma(2.0, 3, finest_mm=10.0) == 0.0  # below the narrowest kernel: left as it is


def test_noise_factor_is_what_the_filter_does_to_white_noise():
    g = torch.Generator().manual_seed(0)
    for nd, shape in ((2, (400, 400)), (3, (80, 80, 80))):
        x = torch.randn(shape, generator=g)
        for sigma in (0.5, 1.0, 1.5):
            y = gaussian_filter(x, [sigma] * nd, truncate=noise.TRUNCATE)
            inner = tuple(slice(6, -6) for _ in range(nd))
            measured = float(x[inner].std() / y[inner].std())
            assert measured == pytest.approx(noise.noise_factor(sigma, nd), rel=0.03), (nd, sigma)


@pytest.mark.parametrize("nd", [2, 3])
def test_smoothing_sigma_reaches_the_target_and_leaves_clean_images_alone(nd):
    assert noise.smoothing_sigma(None, nd) == 0.0
    assert noise.smoothing_sigma(noise.NOISY_SNR[nd], nd) == 0.0
    assert noise.smoothing_sigma(math.inf, nd) == 0.0
    previous = 0.0
    for ratio in np.linspace(noise.NOISY_SNR[nd] - 0.01, 1.0, 12):
        s = noise.smoothing_sigma(float(ratio), nd)
        assert s >= previous  # noisier images are smoothed at least as much
        previous = s
        if s < noise.MAX_SIGMA_VOX:
            assert ratio * noise.noise_factor(s, nd) >= noise.TARGET_SNR[nd]
    assert noise.smoothing_sigma(1.0, nd) == noise.MAX_SIGMA_VOX


def test_denoise_returns_a_clean_image_itself_and_smooths_a_noisy_one():
    img, _, _ = _mni_slice()
    clean = torch.from_numpy(img)
    same, record = noise.denoise(clean)
    assert same is clean and record["sigma_vox"] == 0.0  # so a clean pair's registration is unchanged to the bit
    noisy = torch.from_numpy(_with_noise(img, float(np.median(img[img > 0.05 * img.max()])) / 3.0, seed=2))
    smoothed, record = noise.denoise(noisy)
    assert record["sigma_vox"] > 0 and record["snr"] < noise.NOISY_SNR[2]
    assert noise.snr(smoothed) > 3 * record["snr"]


def _noisy_pair(snr: float):
    """An MNI slice against a T2-like copy under a smooth 6 mm deformation, Rician noise at ``snr`` on both."""
    t1, lab, aff = _mni_slice()
    cs = coarse_shape(t1.shape, 4)
    v = random_velocity(cs, 6.0 / ((t1.shape[0] - 1) / (cs[0] - 1)), seed=3)
    _, pull = deform_pair_field(v, t1.shape)
    moving = warp(remap_contrast(torch.from_numpy(t1), "t2")[None, None], pull)[0, 0].numpy()
    moving_lab = warp(torch.from_numpy(lab.astype(np.float32))[None, None], pull, mode="nearest")[0, 0].numpy()

    def rician(a, seed):
        g = np.random.default_rng(seed)
        s = a[a > np.percentile(a, 60)].mean() / snr
        return np.sqrt((a + g.normal(0, s, a.shape)) ** 2 + g.normal(0, s, a.shape) ** 2).astype(np.float32)

    return rician(t1, 1), rician(moving, 2), lab, moving_lab, aff


def test_a_noisy_pair_registers_better_smoothed():
    """Both images at SNR 3 (a 2-D slice; the 3-D demo pair in README, "Noisy images"): without the smoothing the
    registration ends below no registration at all; with it, well above, and the report says what was done."""
    fixed, moving, lab, moving_lab, aff = _noisy_pair(3.0)

    def gm_wm(warped) -> float:
        d = dice(lab, warped)
        return float(np.mean([d[1], d[2]]))

    none = gm_wm(moving_lab)
    results = {}
    for on in (False, True):
        r = api.register((fixed, aff), (moving, aff), labels=Image(moving_lab[None], aff, None), qc=False, denoise=on)
        results[on] = (gm_wm(r.warped_labels.data[0]), r.report.get("noise"))
        said = [n for n in r.report["verdict"]["notes"] if "image is noisy" in n]
        assert len(said) == (2 if on else 0), r.report["verdict"]  # the CLI prints the verdict's notes
    assert results[False][1] is None
    assert results[True][1]["fixed"]["sigma_vox"] > 0 and results[True][1]["moving"]["sigma_vox"] > 0
    assert results[False][0] < none + 0.01
    assert results[True][0] > none + 0.04, (none, results)
    assert results[True][0] > results[False][0] + 0.04, (none, results)
