"""A failure score for one registration, without ground truth.

What UniReg has after a registration is the fixed image's frozen MIND-SSC features, the moving
features pulled through the found displacement, and the displacement's Jacobian.  Three figures
come from them, all computed inside a foreground mask of the fixed image:

``mind_distance``
    mean over the mask of the per-voxel feature distance ``d0(x) = mean_c |F(x) - M(x)|``
    (MIND values lie in (0, 1], so ``d0`` does too).
``shift_ratio``
    ``mean d0 / mean d_s``, where ``d_s`` is the same distance with the warped moving features
    shifted by ``SHIFT_VOX`` voxels along each axis, both ways.  After a good registration the
    found position is a clear minimum of the feature distance (ratio well below 1); after a gross
    failure (wrong translation, flipped axis, unrelated image) any nearby position matches about as
    badly as the found one (ratio near 1).  Being a ratio, it does not depend on how different the
    two contrasts are, nor on 2-D (4 MIND channels) versus 3-D (12 channels).
``mismatch_fraction``
    the fraction of mask voxels where, after box smoothing over ``(2 * SMOOTH_RADIUS + 1)`` voxels,
    some shifted position matches better than the found one: the "badly matched" voxels.
``folded_percent``
    percentage of mask voxels with ``det J <= 0``.

All of them are taken where the fixed image has structure (:func:`informative_mask`): MIND
normalises each voxel's patch distances by their local variance, so in a flat region (an organ of one
intensity, a phantom's label, white matter's centre) its channels describe noise, full range, and
no shift of the moving features matches them better or worse than another: a flat region scores
as "badly matched" whatever the registration did.  In 2-D they also leave out the fixed structure
that faces moving tissue without structure of its own (:func:`scored_mask`: a boundary the moving
contrast erased, which no shift can match either).  On the held-out suite's 2-D pairs
(``benchmarks/qc_suite.py``, default registrations) the flag fired on 35 of pairs 0-19 (23 of 33 body
phantoms) and 37 of pairs 20-39 scored over the whole foreground, on 12 and 14 scored where the image
has structure; on the MNI calibration pairs (``benchmarks/calibrate_qc.py``) the rates did not move.

The score is a logistic combination of ``shift_ratio``, ``mismatch_fraction``, ``log1p(folded_percent)``
and ``mind_distance`` with the weights in :data:`QC_WEIGHTS`, so it lies in [0, 1] and higher means
more likely failed; ``qc_flag`` is ``qc_score >= QC_THRESHOLD``.  Weights and threshold were fitted
on synthetic 2-D pairs with known good and deliberately broken registrations by
``benchmarks/calibrate_qc.py`` (see docs/qc.md for the method and the measured rates).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..align.referee import nmi_tensor
from ..features.mind import mind_ssc, mind_variance
from ..spatial.grid import replicate_shift_parts, warp

__all__ = [
    "qc_score",
    "qc_components",
    "flagged",
    "intensities_vouch",
    "nmi_shift_ratio",
    "NMI_SHARP",
    "combine",
    "foreground_mask",
    "score_registration",
    "QC_THRESHOLD",
    "QC_WEIGHTS",
    "SHIFT_VOX",
    "SMOOTH_RADIUS",
    "INFORMATIVE",
    "informative_mask",
    "scored_mask",
    "MOVING_STRUCTURE",
    "MOVING_FLOOR_QUANTILE",
]

SHIFT_VOX = 2  # voxels of the working grid; the MIND neighbour distance is 2 voxels too
SMOOTH_RADIUS = 2  # box radius (voxels) of the local comparison behind mismatch_fraction
# A voxel of the fixed foreground is scored where MIND's local variance exceeds this share of its
# mean over the foreground.  The variance is bimodal on the suite's phantoms (flat organs: below 0.01
# of the mean; edges: above 0.3); false alarms on suite pairs 0-19 (2-D, from the components the
# pipeline computed) were 10-11 for any level from 0.03 to 0.3, so 0.1 is not a tuned value; the MNI
# brain keeps ~80 % of its foreground at 0.1.
INFORMATIVE = 0.1
# ... and, in 2-D, where the warped moving image has structure of its own (:func:`scored_mask`): its MIND
# variance above MOVING_STRUCTURE times the MOVING_FLOOR_QUANTILE quantile of that variance over the
# object (flat tissue's: the noise floor).  Per dimension (0: off).  2-D (4 channels from 3x3 patches: a
# contrast that nearly erases a boundary leaves noise there): false alarms on good registrations fell
# 8/88 -> 0/88 (MNI slices, calibrate_qc.py held-out) and 10/98 -> 4/98, 14/95 -> 10/95 (qc_suite.py,
# pairs 0-19, 20-39).  3-D: off.  Its 12 channels from 27-voxel patches still see a weak contrast: the 12
# real 3-D registrations of CT-like blocks that ended worse were all flagged with the fixed structure
# alone (good ones 0/45), 2/12 with this mask; and the 10 % quantile of the 3-D variance is no noise floor
# (the mask kept 20 % of a T1 block's fixed structure).  See docs/qc.md.
MOVING_STRUCTURE = {2: 10.0, 3: 0.0}
MOVING_FLOOR_QUANTILE = 0.1
_QUANTILE_MAX = 2**24

# Logistic weights over the components (intercept first), fitted by benchmarks/calibrate_qc.py on 25
# synthetic 2-D pairs (seeds 0-24): class-balanced logistic regression, then the threshold maximising
# TPR - FPR on the calibration scores folded into the intercept, so that the flag is ``score >= 0.5``.
# Held-out (seeds 1000-1019): TPR 124/124 = 1.00, FPR 1/16 = 0.06 (docs/qc.md has the breakdown).
QC_WEIGHTS: dict[str, float] = {
    "intercept": -7.782,
    "shift_ratio": 4.528,
    "mismatch_fraction": 7.574,
    "log1p_folded_percent": 0.866,
    "mind_distance": 2.237,
}
# Flag threshold on qc_score (see above and docs/qc.md; command: python benchmarks/calibrate_qc.py).
QC_THRESHOLD = 0.5
# The intensities' second opinion (session 26).  MIND's patterns can disagree across a contrast even where
# the alignment is exact (an inverted or piecewise map, a CT-like map that erases a boundary, a phantom's
# flat labels): a pair the suite had *already aligned* in an inverted contrast scored 0.87 (shift ratio
# 0.97), and every pair the held-out suite's fresh runs flagged (9-11 of 100 per 2-D set, 1-2 of 10 per 3-D
# set) had a Dice at or above no registration.  So the flag also asks the intensities: the NMI of the fixed
# image and the warped moving one (NMI_BINS bins, on the fixed foreground eroded by SHIFT_VOX + 1 voxels, so
# that a shared outline alone cannot vouch: two unrelated phantoms in one disk score 0.68-0.73 on the whole
# disk, 1.05-1.09 inside it) at the found alignment against the same with the warped image shifted
# SHIFT_VOX voxels along each axis, both ways: ``nmi_shift_ratio`` = mean over the shifts of (NMI - 1) /
# (NMI at the alignment - 1).  A registration whose NMI peaks sharply where it ended (ratio below
# NMI_SHARP: 2-D good registrations mostly below 0.45, broken ones from 0.66; 3-D good up to 0.37,
# broken from 0.53), and which does not fold (below VETO_FOLDED % of the scored voxels), is not flagged,
# whatever MIND says.  Calibration and rates: benchmarks/calibrate_qc.py (it prints both per dimension),
# docs/qc.md.
NMI_BINS = 32
NMI_MIN_POINTS = 200  # fewer points inside the eroded foreground, or less information at the alignment
NMI_MIN_GAIN = 0.01  # (NMI - 1; unrelated images 0.02, good registrations 0.08-0.55): no opinion, no veto
NMI_SHARP = {2: 0.6, 3: 0.45}
VETO_FOLDED = 0.05


def _shift(x: torch.Tensor, axis: int, s: int) -> torch.Tensor:
    """``y[i] = x[clamp(i + s)]`` along spatial ``axis`` of ``(B, C, *S)`` (replicated edges)."""
    dim = 2 + axis
    n = x.shape[dim]
    s = max(-(n - 1), min(n - 1, s))
    if s == 0:
        return x
    if s > 0:
        edge = x.narrow(dim, n - 1, 1).expand(*[s if d == dim else -1 for d in range(x.dim())])
        return torch.cat([x.narrow(dim, s, n - s), edge], dim=dim)
    edge = x.narrow(dim, 0, 1).expand(*[-s if d == dim else -1 for d in range(x.dim())])
    return torch.cat([edge, x.narrow(dim, 0, n + s)], dim=dim)


def _shifted_distance(ff: torch.Tensor, fw: torch.Tensor, axis: int, s: int) -> torch.Tensor:
    """``|ff - _shift(fw, axis, s)|`` averaged over the channels, ``(B, 1, *S)``: the same values without
    the shifted copy of ``fw`` (the interior and the repeated edge taken as views)."""
    dim = 2 + axis
    parts = replicate_shift_parts(fw, dim, s)
    if len(parts) == 1:  # no shift
        return (ff - fw).abs().mean(1, keepdim=True)
    out = ff.new_empty(ff.shape[0], 1, *ff.shape[2:])
    for start, length, y in parts:
        out.narrow(dim, start, length).copy_((ff.narrow(dim, start, length) - y).abs().mean(1, keepdim=True))
    return out


def _zero_padded_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum over the ``(2r+1)``-wide box (zeros beyond the edge) divided by its volume, on ``(B, C, *S)``:
    one 1-D pass per axis (a box is separable: 3 x 5 reads per voxel in 3-D instead of 125; the same
    figures up to float rounding, 0.7 -> 0.1 s for the 1 mm head's 2 mm working grid)."""
    nd = x.dim() - 2
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    k = 2 * r + 1
    for axis in range(nd):
        kernel = tuple(k if a == axis else 1 for a in range(nd))
        pad = tuple(r if a == axis else 0 for a in range(nd))
        x = pool(x, kernel, stride=1, padding=pad, count_include_pad=True)
    return x


def _box_den(x: torch.Tensor, r: int) -> torch.Tensor:
    """:func:`_box`'s normaliser for images shaped like ``x`` (the same for every such image)."""
    return _zero_padded_mean(torch.ones_like(x), max(int(r), 0))


def _box(x: torch.Tensor, r: int, den: torch.Tensor | None = None) -> torch.Tensor:
    """Mean filter of width ``2r+1`` on ``(B, 1, *S)`` (zero padding, renormalized); ``den``:
    :func:`_box_den` of that shape, computed once for several images."""
    if r <= 0:
        return x
    return _zero_padded_mean(x, r) / (_box_den(x, r) if den is None else den)


def foreground_mask(image: torch.Tensor | np.ndarray, level: float = 0.05) -> torch.Tensor:
    """Foreground of an intensity-normalized image ``(*S)`` in [0, 1]: voxels above ``level``.

    Falls back to every voxel when that leaves less than 1 % of the image.
    """
    img = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
    m = img > level
    if m.float().mean() < 0.01:
        m = torch.ones_like(m)
    return m


def informative_mask(fixed_w: torch.Tensor, foreground: torch.Tensor, level: float = INFORMATIVE) -> torch.Tensor:
    """The voxels of ``foreground`` ``(*S)`` (boolean) where the fixed working image ``fixed_w`` ``(1, *S)``
    has structure: MIND's local variance (:func:`unireg.features.mind.mind_variance`) above ``level``
    times its mean over the foreground.  The foreground itself when that keeps under 1 % of it."""
    fg = foreground.bool()
    v = mind_variance(fixed_w[None].float().to(fg.device))[0, 0]
    n = fg.sum()
    mean = (v * fg).sum() / n.clamp_min(1)
    keep = fg & (v > level * mean)
    # no host read (the stage stays on its device): the choice is an elementwise where
    return torch.where(keep.sum() >= 0.01 * n, keep, fg)


def scored_mask(
    fixed_w: torch.Tensor,
    foreground: torch.Tensor,
    moving_w: torch.Tensor | None = None,
    disp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Where a registration is scored, ``(*S)`` boolean: the fixed image's structure
    (:func:`informative_mask`) less the voxels where the moving image ``moving_w`` ``(1, *S)``, pulled
    through ``disp`` ``(1, ndim, *S)`` (None: as it is), is object without structure of its own.

    Per dimension (:data:`MOVING_STRUCTURE`; off in 3-D). A contrast can erase a boundary (grey and white matter
    0.04 apart in a CT-like image, two organs of one PD): there the moving MIND describes noise, no shift matches
    the fixed structure better than another, and the voxel would read "badly matched" however well the pair is
    aligned. A voxel of the moving object counts as structured where MIND's local variance exceeds
    ``MOVING_STRUCTURE[nd]`` times its noise floor (the ``MOVING_FLOOR_QUANTILE`` quantile of that variance over the
    fixed foreground inside the moving object: flat tissue). Where the warped moving image is background (normalised
    intensity <= 0.05) the voxel stays scored: fixed structure facing the moving image's background is a mismatch,
    not a lost contrast. ``None`` (or under 1 % left): the fixed image's structure alone.  No host read: the choices
    are elementwise ``where``."""
    keep = informative_mask(fixed_w, foreground)
    k = MOVING_STRUCTURE.get(fixed_w.dim() - 1, 0.0)
    if moving_w is None or k <= 0:
        return keep
    fg = foreground.bool()
    mw = moving_w.float().to(fg.device)
    if disp is not None:
        mw = warp(mw[None], disp.float().to(fg.device), padding_mode="border")[0]
    v = mind_variance(mw[None])[0, 0]
    m_object = foreground_mask(mw[0]).to(fg.device)
    flat_ref = torch.where(fg & m_object, v, torch.nan).flatten()
    flat_ref = flat_ref[:: -(-flat_ref.numel() // _QUANTILE_MAX)]  # torch's quantile takes <= 2**24 values
    floor = torch.nan_to_num(torch.nanquantile(flat_ref, MOVING_FLOOR_QUANTILE), nan=0.0)
    out = keep & ((v > k * floor) | ~m_object)
    return torch.where(out.sum() >= 0.01 * fg.sum(), out, keep)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


def _structure_mask(fixed_feat: torch.Tensor) -> torch.Tensor:
    """Voxels where the fixed MIND features are not flat (flat regions give all channels = 1)."""
    m = (1.0 - fixed_feat[0].amin(0)) > 0.01
    if m.float().mean() < 0.01:
        m = torch.ones_like(m)
    return m


def nmi_shift_ratio(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """``(*S)`` fixed and warped moving intensities (~[0, 1]) and a boolean ``(*S)`` mask -> a 0-d tensor:
    the mean over shifts of SHIFT_VOX voxels along each axis, both ways, of (NMI - 1) / (NMI at the
    alignment - 1) (module comment at :data:`NMI_SHARP`); None when the grid is too small to shift in."""
    s = SHIFT_VOX
    shape = tuple(fixed.shape)
    if min(shape) <= 4 * s:
        return None
    inner = tuple(slice(s, n - s) for n in shape)
    f, w = fixed[inner].float(), _eroded(mask, s + 1)[inner].float()
    gain0 = nmi_tensor(f, warped[inner].float(), NMI_BINS, w) - 1
    gains = []
    for axis in range(len(shape)):
        for d in (s, -s):
            sl = list(inner)
            sl[axis] = slice(s + d, shape[axis] - s + d)
            gains.append(nmi_tensor(f, warped[tuple(sl)].float(), NMI_BINS, w) - 1)
    ratio = torch.stack(gains).mean() / gain0.clamp_min(1e-6)
    judged = (w.sum() >= NMI_MIN_POINTS) & (gain0 >= NMI_MIN_GAIN)  # an empty warped image shares nothing
    return torch.where(judged, ratio, torch.full_like(ratio, math.nan))  # no host read


def _eroded(mask: torch.Tensor, r: int) -> torch.Tensor:
    """``mask`` ``(*S)`` eroded by ``r`` voxels (a cube/square element): a min-pool."""
    pool = F.max_pool2d if mask.dim() == 2 else F.max_pool3d
    outside = (~mask.bool()).float()[None, None]
    return pool(outside, 2 * r + 1, stride=1, padding=r)[0, 0] < 0.5


def intensities_vouch(components: dict, ndim: int) -> bool:
    """The intensities' NMI peaks sharply at the found alignment (``nmi_shift_ratio`` below
    :data:`NMI_SHARP` of an ``ndim``-D grid) and the map does not fold: then it is not flagged."""
    r = components.get("nmi_shift_ratio")
    return r is not None and r < NMI_SHARP[ndim] and components["folded_percent"] < VETO_FOLDED


def flagged(
    components: dict, ndim: int, weights: dict[str, float] | None = None, threshold: float | None = None
) -> bool:
    """The failure flag: the score at or above the threshold, unless the intensities vouch for the alignment."""
    thr = QC_THRESHOLD if threshold is None else threshold
    return combine(components, weights) >= thr and not intensities_vouch(components, ndim)


@torch.no_grad()
def qc_components(
    fixed_feat: torch.Tensor,
    warped_moving_feat: torch.Tensor,
    jac: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """The raw figures behind :func:`qc_score` (see the module docstring).

    Parameters
    ----------
    fixed_feat, warped_moving_feat : ``(1, C, *S)`` MIND-SSC features on the same grid.
    jac : ``(*S)`` det J of the displacement on that grid.
    mask : ``(*S)`` boolean foreground, or None for the voxels where the fixed features are not flat.
    """
    ff = fixed_feat.detach().float()  # on the features' device: one host read at the end
    dev = ff.device
    fw = warped_moving_feat.detach().float().to(dev)
    if ff.shape != fw.shape or ff.dim() not in (4, 5) or ff.shape[0] != 1:
        raise ValueError(f"expected two (1, C, *S) feature maps of one shape, got {tuple(ff.shape)}, {tuple(fw.shape)}")
    nd = ff.dim() - 2
    spatial = tuple(ff.shape[2:])
    m = _structure_mask(ff) if mask is None else _as_tensor(mask).bool().to(dev)
    if tuple(m.shape) != spatial:
        raise ValueError(f"mask shape {tuple(m.shape)} differs from the feature grid {spatial}")
    j = _as_tensor(jac).float().to(dev).reshape(spatial)

    d0 = (ff - fw).abs().mean(1, keepdim=True)
    ds = [_shifted_distance(ff, fw, a, s * SHIFT_VOX) for a in range(nd) for s in (1, -1)]
    n = m.sum().clamp_min(1)
    den = _box_den(d0, SMOOTH_RADIUS)
    b0 = _box(d0, SMOOTH_RADIUS, den)
    bmin = torch.stack([_box(d, SMOOTH_RADIUS, den) for d in ds]).amin(0)
    sums = [(d0[0, 0] * m).sum() / n] + [(d[0, 0] * m).sum() / n for d in ds]
    sums += [((b0 >= bmin)[0, 0] & m).sum() / n, ((j <= 0) & m).sum() / n]
    vals = torch.stack(sums).tolist()
    mean0 = vals[0]
    mean_s = sum(vals[1 : 1 + len(ds)]) / len(ds)
    mismatch = vals[-2]
    folded = vals[-1] * 100.0
    return {
        "mind_distance": mean0,
        "shift_ratio": mean0 / max(mean_s, 1e-12),
        "mismatch_fraction": mismatch,
        "folded_percent": folded,
    }


def combine(components: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """Logistic combination of :func:`qc_components`' figures -> failure score in [0, 1]."""
    w = QC_WEIGHTS if weights is None else weights
    z = w["intercept"]
    z += w["shift_ratio"] * components["shift_ratio"]
    z += w["mismatch_fraction"] * components["mismatch_fraction"]
    z += w["log1p_folded_percent"] * math.log1p(components["folded_percent"])
    z += w["mind_distance"] * components["mind_distance"]
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def qc_score(
    fixed_feat: torch.Tensor,
    warped_moving_feat: torch.Tensor,
    jac: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """Failure score of one registration from features and Jacobian alone (no ground truth).

    Parameters
    ----------
    fixed_feat : ``(1, C, *S)`` MIND-SSC features of the fixed image (the calibration used MIND).
    warped_moving_feat : ``(1, C, *S)`` moving features pulled through the registration's warp.
    jac : ``(*S)`` det J of the warp on the same grid.
    mask : optional ``(*S)`` boolean foreground of the fixed image (default: where the fixed
        features are not flat).

    Returns
    -------
    dict
        ``qc_score`` (float in [0, 1], higher = more likely failed), ``qc_flag`` (:func:`flagged`: without
        ``nmi_shift_ratio`` among the components, ``qc_score >= QC_THRESHOLD``), ``qc_threshold``, and
        ``qc_components`` (the raw figures).
    """
    comp = qc_components(fixed_feat, warped_moving_feat, jac, mask)
    s = combine(comp)
    return {
        "qc_score": round(s, 4),
        "qc_flag": flagged(comp, fixed_feat.dim() - 2),
        "qc_threshold": QC_THRESHOLD,
        "qc_components": {k: round(v, 5) for k, v in comp.items()},
    }


def _within(mask: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
    """``mask`` inside the user's masks; a user mask that misses ``mask`` entirely: the user mask rather
    than nothing (an empty one: ``mask``)."""
    if user is None:
        return mask
    both = mask & user
    return both if both.any() else (user if user.any() else mask)


@torch.no_grad()
def score_registration(
    fixed_w: torch.Tensor,
    moving_w: torch.Tensor,
    disp_w: torch.Tensor,
    jac_w: torch.Tensor | np.ndarray,
    fixed_feat: torch.Tensor | None = None,
    moving_feat: torch.Tensor | None = None,
    *,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
) -> dict:
    """:func:`qc_score` on the working grid, the way :func:`unireg.pipeline.register_images` calls it; a
    registration the score flags is then judged by the intensities too (:func:`nmi_shift_ratio`, added to
    ``qc_components``; :func:`flagged`).

    Parameters
    ----------
    fixed_w, moving_w : ``(1, *S)`` intensity-normalized images on the working grid (moving already
        through the affine part).
    disp_w : ``(1, ndim, *S)`` working-grid displacement in voxels.
    jac_w : ``(*S)`` its det J.
    fixed_feat, moving_feat : ``(1, C, *S)`` MIND features of the two images when the registrar
        already computed them; otherwise default MIND-SSC is computed here.
    fixed_mask : optional boolean ``(*S)`` user mask on the working grid: only voxels inside it
        (and inside the fixed foreground) are scored.
    moving_mask : optional boolean ``(*S)`` moving mask already on the working grid through the
        affine; it is carried through ``disp_w`` and scoring keeps the voxels that land inside it.
    """
    dev = disp_w.device  # everything is scored where the displacement lives
    if fixed_feat is None or moving_feat is None:
        fixed_feat = mind_ssc(fixed_w[None].float().to(dev))
        moving_feat = mind_ssc(moving_w[None].float().to(dev))
    fixed_feat, moving_feat = fixed_feat.float().to(dev), moving_feat.float().to(dev)
    disp = disp_w.float()
    warped = warp(moving_feat, disp, padding_mode="border")
    mask = scored_mask(fixed_w.to(dev), foreground_mask(fixed_w[0]).to(dev), moving_w, disp)
    user = None
    if fixed_mask is not None:
        user = _as_tensor(fixed_mask).bool().to(dev)
    if moving_mask is not None:
        mw = warp(_as_tensor(moving_mask).float().to(dev)[None, None], disp)[0, 0] >= 0.5
        user = mw if user is None else user & mw
    mask = _within(mask, user)
    out = qc_score(fixed_feat, warped, jac_w, mask)
    if out["qc_flag"]:  # only a flag hears the intensities: 5 (2-D) or 7 NMIs, ~1 s on a 3-D head's grid
        fg = _within(foreground_mask(fixed_w[0]).to(dev), user)
        warped_img = warp(moving_w[None].float().to(dev), disp, padding_mode="border")[0, 0]
        r = nmi_shift_ratio(fixed_w[0].float().to(dev), warped_img, fg)
        ratio = math.nan if r is None else float(r)  # a second host read, for a flag only
        if math.isfinite(ratio):
            out["qc_components"]["nmi_shift_ratio"] = round(ratio, 5)
            out["qc_flag"] = flagged(out["qc_components"], fixed_feat.dim() - 2)
    return out
