"""The do-no-harm referee: NMI at continuous native-grid points (unireg.align.referee)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unireg.align.referee import Referee, nmi


def _volume(shape=(40, 44, 36), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.5)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _shift(dx: float, nd: int = 3) -> np.ndarray:
    t = np.eye(nd + 1)
    t[0, nd] = dx
    return t


def test_nmi_ranks_dependence():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200_000, generator=g), torch.rand(200_000, generator=g)
    noisy = a + 0.05 * torch.randn(200_000, generator=g)
    assert nmi(a, a) > nmi(a, 1 - a) - 1e-9 > nmi(a, noisy) > nmi(a, b)
    assert nmi(a, b) == pytest.approx(1.0, abs=0.01)  # independent samples


def test_the_referee_peaks_at_the_true_map_whatever_the_contrast():
    fixed = _volume()
    rng = np.random.default_rng(1)
    moving = (1.0 - fixed) ** 1.7 + rng.normal(0, 0.02, fixed.shape).astype(np.float32)  # inverted, gamma, noise
    judge = Referee(fixed, np.eye(4), moving, np.eye(4), 3, mask=np.ones(fixed.shape, bool))
    best = judge.score(np.eye(4))
    for dx in (0.5, 1.0, 2.0, -1.5):
        assert judge.score(_shift(dx)) < best


def test_a_subvoxel_shift_of_a_noisy_aligned_pair_is_not_rewarded():
    """Interpolation smooths noise and NMI rewards smoothing: points on the grid itself would score a
    half-voxel shift above the identity (the referee's points are continuous, for both candidates)."""
    fixed = _volume(seed=3)
    rng = np.random.default_rng(4)
    moving = fixed + rng.normal(0, 0.15, fixed.shape).astype(np.float32)
    judge = Referee(fixed, np.eye(4), moving, np.eye(4), 3, mask=np.ones(fixed.shape, bool))
    assert judge.score(np.eye(4)) > judge.score(_shift(0.5))


def test_a_displacement_scores_as_the_translation_it_equals():
    """The displacement path (working-grid voxels -> world) agrees with the affine path, on a working
    grid with 2 mm voxels and an offset origin."""
    fixed = _volume(seed=5)
    moving = np.roll(fixed, 3, axis=0)
    judge = Referee(fixed, np.eye(4), moving, np.eye(4), 3)
    w_aff4 = np.diag([2.0, 2.0, 2.0, 1.0])
    w_aff4[:3, 3] = [-1.0, 0.5, 0.0]
    w_shape = (21, 23, 19)
    disp = torch.zeros((1, 3) + w_shape)
    disp[:, 0] = 1.5  # 3 mm along x
    assert judge.score(np.eye(4), disp, w_aff4) == pytest.approx(judge.score(_shift(3.0)), abs=1e-6)
    assert judge.score(_shift(3.0)) > judge.score(np.eye(4)) + 0.1


def test_the_inverse_referee_scores_the_inverse_map():
    """Seen from the moving image: its points on the moving grid, the fixed image pulled through the
    inverse of the fixed->moving affine, then through the inverse displacement it is given.  A shift by
    3 mm scores the same as the identity affine with a -3 mm inverse displacement, peaks at the true
    map, and the moving image's own mask chooses the points."""
    fixed = _volume(seed=5)
    moving = np.roll(fixed, 3, axis=0)  # moving(x + 3) = fixed(x): the fixed->moving map is x -> x + 3
    back = Referee(moving, np.eye(4), fixed, np.eye(4), 3, inverse=True)
    w_aff4 = np.diag([2.0, 2.0, 2.0, 1.0])
    w_aff4[:3, 3] = [-1.0, 0.5, 0.0]
    inv = torch.zeros((1, 3, 21, 23, 19))
    inv[:, 0] = -1.5  # -3 mm along x, in 2 mm working voxels
    assert back.score(np.eye(4), inv, w_aff4) == pytest.approx(back.score(_shift(3.0)), abs=1e-6)
    best = back.score(_shift(3.0))
    for dx in (0.0, 2.0, 4.0, -3.0):
        assert back.score(_shift(dx)) < best
    # the forward referee of the same pair agrees on the same map
    forward = Referee(fixed, np.eye(4), moving, np.eye(4), 3)
    assert forward.score(_shift(3.0)) > forward.score(_shift(2.0))
    # mask of its own points: the moving image's (here: half of it)
    half = np.zeros(fixed.shape, bool)
    half[:20] = True
    masked = Referee(moving, np.eye(4), fixed, np.eye(4), 3, mask=half, inverse=True)
    assert float(masked.vox[0].max()) < 19.5


def test_two_dimensional_images():
    fixed = _volume((50, 40, 1), seed=6)[..., 0]
    judge = Referee(fixed, np.eye(4), 1.0 - fixed, np.eye(4), 2)
    assert judge.score(np.eye(3)) > judge.score(_shift(1.0, nd=2))


def test_the_moving_mask_keeps_an_artefact_out_of_the_score():
    """``--moving-mask``: what lies outside it (a bright artefact) must not sway the referee; without
    the mask the same artefact pulls the score down at the true map."""
    fixed = _volume(seed=5)
    moving = fixed.copy()
    keep = np.ones(fixed.shape, bool)
    keep[:12] = False
    moving[:12] = 1.0 - moving[:12]  # the artefact, outside the mask
    full = np.ones(fixed.shape, bool)
    clean = Referee(fixed, np.eye(4), fixed, np.eye(4), 3, mask=full, moving_mask=keep)
    with_art = Referee(fixed, np.eye(4), moving, np.eye(4), 3, mask=full)
    masked = Referee(fixed, np.eye(4), moving, np.eye(4), 3, mask=full, moving_mask=keep)
    for t in (np.eye(4), _shift(1.0)):
        assert masked.score(t) == pytest.approx(clean.score(t), abs=1e-6)  # the artefact is not seen
    assert with_art.score(np.eye(4)) < masked.score(np.eye(4)) - 0.05  # ... and it would be without the mask
    assert masked.score(np.eye(4)) > masked.score(_shift(1.0))  # still peaks at the true map


def _bump(shape, centre, radius, amp) -> np.ndarray:
    """A displacement ``(2, *shape)`` in voxels: ``amp`` along axis 0 inside a smooth disc, zero outside."""
    yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / radius**2
    d = np.zeros((2,) + tuple(shape), np.float32)
    d[0] = amp * np.exp(-r2)
    return d


def test_local_gain_sees_where_a_deformation_aligns_and_where_it_only_moves():
    """Moving = the fixed image in another contrast with its content pushed 2.5 voxels inside a disc
    (left).  A candidate that undoes the push there and also wobbles an untouched region (right) raises
    NMI in the patches of the disc and lowers it in those of the wobble: what the local gate keeps and
    fades out."""
    shape = (96, 96)
    fixed = _volume(shape + (1,), seed=8)[..., 0]
    true = _bump(shape, (48, 28), 10.0, 2.5)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    # moving(x + true(x)) = fixed(x): content pushed by the bump (inverted by a few fixed-point steps)
    pos = grid.copy()
    for _ in range(20):  # pos = y - true(pos): the point that the true map takes to y
        pos = grid - np.stack([ndimage.map_coordinates(true[c], [pos[0], pos[1]], order=1) for c in range(2)])
    moving = ndimage.map_coordinates(fixed, [pos[0], pos[1]], order=3, mode="nearest")
    rng = np.random.default_rng(9)
    moving = (1.0 - np.clip(moving, 0, 1)) ** 1.5 + rng.normal(0, 0.02, shape).astype(np.float32)
    wobble = _bump(shape, (48, 72), 8.0, 1.5)
    cand = torch.from_numpy(true + wobble)[None]
    judge = Referee(fixed, np.eye(4), moving, np.eye(4), 2, points=400_000, per_voxel=40.0,
                    mask=np.ones(shape, bool))
    gain, counts = judge.local_gain(np.eye(3), cand, np.eye(4), patch_mm=16.0)
    assert gain.shape == (11, 11) and float(counts.min()) > 1000
    # patch p covers cells p and p + 1 (8 voxels each): its centre is at 8 (p + 1)
    disc, wob, far = gain[5, 2], gain[5, 8], gain[1, 5]
    assert disc > 0.02, gain
    assert wob < 0.0, gain
    assert abs(float(far)) < 0.005, gain  # nothing moved there, the candidate moves nothing there
    keep = (gain > 0.005).float()
    w = judge.patch_weights_on(keep, 16.0, shape, np.eye(4))[0, 0]
    assert w.shape == shape
    assert float(w[48, 28]) > 0.9 and float(w[48, 72]) < 0.1
