"""resample_fixed_grid and displacement_on_grid: slab-size invariance and hand-computed cases."""

import numpy as np
import pytest
import torch

from unireg.pipeline import displacement_on_grid
from unireg.resample import (
    VOTE_MIN_LABELS,
    labelwise_argmax,
    labelwise_vote,
    resample_fixed_grid,
    warp_labels,
)
from unireg.spatial.grid import sample

from .synthetic_pairs import grid_affine, rotation


def _case(n_labels: int):
    g = torch.Generator().manual_seed(0)
    f_shape = (11, 9, 8)
    f_aff = grid_affine(f_shape, (1.0, 1.2, 1.5), rotation(2, 10.0), (0.0, 0.0, 0.0))
    w_shape = (7, 6, 6)
    w_aff = grid_affine(w_shape, (2.0, 2.0, 2.0), np.eye(3), (0.5, -0.5, 0.0))
    m_shape = (12, 10, 9)
    m_aff = grid_affine(m_shape, (1.1, 1.1, 1.3), rotation(0, -8.0), (1.0, 0.0, -1.0))
    t = np.eye(4)
    t[:3, 3] = [1.0, -0.5, 0.3]
    disp_w = 0.8 * torch.randn((1, 3, *w_shape), generator=g)
    jac_w = 1.0 + 0.1 * torch.randn(w_shape, generator=g)
    moving = torch.rand((2, *m_shape), generator=g).numpy()
    labels = torch.randint(0, n_labels, m_shape, generator=g).numpy().astype(np.int16)
    return f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels


# label-wise through one-hot maps and through the corner vote (a few labels, and as many as a FreeSurfer aparc+aseg)
@pytest.mark.parametrize("n_labels", [5, VOTE_MIN_LABELS + 3, 120])
def test_resample_fixed_grid_is_the_same_for_any_slab_size(n_labels):
    f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels = _case(n_labels)
    whole = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels, chunk_voxels=10**9)
    assert len(np.unique(whole["labels"])) > 2 and np.abs(whole["warped"]).sum() > 0
    for chunk in (1, 100, 3 * 9 * 8 + 1):  # one row per slab, ragged slabs
        out = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels, chunk_voxels=chunk)
        for k in ("warp_mm", "warped", "jacobian", "labels"):
            assert np.array_equal(out[k], whole[k]), k


def test_resample_fixed_grid_identity_by_hand():
    """Zero displacement, identity affine, working grid = fixed grid = moving grid: the moving image
    comes back, the warp is zero and the Jacobian is the working one."""
    shape = (6, 5, 4)
    aff = np.diag([2.0, 1.0, 3.0, 1.0])
    moving = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    labels = (np.arange(np.prod(shape)) % 3).reshape(shape).astype(np.uint8)
    jac = torch.full(shape, 0.5)
    out = resample_fixed_grid(shape, aff, aff, np.eye(4), torch.zeros(1, 3, *shape), jac, moving, aff, labels,
                              chunk_voxels=7)
    assert np.allclose(out["warped"], moving, atol=1e-5)
    assert np.abs(out["warp_mm"]).max() < 1e-5
    assert np.allclose(out["jacobian"], 0.5)
    assert np.array_equal(out["labels"], labels) and out["labels"].dtype == np.uint8


def test_displacement_on_grid_by_hand_and_chunk_invariant():
    """mapping(x) = M x + t gives u(x) = (M - I) x + t at every voxel's world position x."""
    shape = (5, 4, 3)
    aff = np.diag([2.0, 1.0, 0.5, 1.0])
    aff[:3, 3] = [1.0, 2.0, 3.0]
    m = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    tr = torch.tensor([1.0, -1.0, 0.5])

    def mapping(x):
        return torch.einsum("ij,j...->i...", m, x) + tr.view(3, 1, 1, 1)

    u = displacement_on_grid(mapping, shape, aff, chunk_voxels=4)
    # voxel (2, 3, 1): x = (5, 5, 3.5); u = (0.1*5 + 1, -1, 3.5 + 0.5) = (1.5, -1, 4)
    assert u.shape == (3, *shape) and u.dtype == np.float32
    assert np.allclose(u[:, 2, 3, 1], [1.5, -1.0, 4.0])
    assert np.array_equal(u, displacement_on_grid(mapping, shape, aff, chunk_voxels=10**6))


def test_labelwise_argmax_stays_on_the_probabilities_device():
    """The running maximum builds its index where the probabilities are (on CUDA it once built it on
    the CPU and every labelled registration crashed); the meta device stands in for a GPU here."""
    from unireg.resample import labelwise_argmax

    probs = torch.tensor([[0.2, 0.5, 0.5], [0.7, 0.1, 0.5], [0.1, 0.4, 0.0]])
    assert labelwise_argmax(probs).tolist() == [1, 0, 0]  # first wins ties
    out = labelwise_argmax(torch.empty(3, 4, 5, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 5) and out.dtype == torch.int64


def test_inverse_on_grid_is_the_inverse_map_evaluated_voxel_by_voxel():
    """FixedToMoving.inverse_on_grid (matrices composed once) gives displacement_on_grid of the inverse
    map (matrices applied one by one) on an oblique grid with a sheared affine and a smooth field, with
    and without the affine, whatever the slab size."""
    from unireg.pipeline import FixedToMoving
    from unireg.spatial.world import working_grid

    from .synthetic_pairs import grid_affine, rotation

    centre = np.array([2.0, -3.0, 5.0])
    shape, aff = (21, 18, 16), grid_affine((21, 18, 16), (1.7, 1.5, 2.0), rotation(0, -12), centre)
    w_shape, w_aff = working_grid((20, 19, 17), grid_affine((20, 19, 17), (1.5, 1.6, 1.8), rotation(2, 10), centre),
                                  spacing=2.0)
    t = np.eye(4)
    t[:3, :3] = rotation(1, 7) @ np.array([[1.04, 0.03, 0.0], [0.0, 0.97, 0.02], [0.01, 0.0, 1.02]])
    t[:3, 3] = [2.5, -1.5, 1.0]
    g = torch.Generator().manual_seed(0)
    inv = torch.nn.functional.avg_pool3d(torch.randn(1, 3, *w_shape, generator=g) * 4, 5, 1, 2)
    mapping = FixedToMoving(3, w_aff, t, torch.zeros_like(inv), inv)
    for with_affine in (True, False):
        if with_affine:
            ref = displacement_on_grid(mapping.inverse, shape, aff)
        else:
            ref = displacement_on_grid(lambda x: mapping._through(x, mapping.inv_disp_vox), shape, aff)
        got = mapping.inverse_on_grid(shape, aff, with_affine=with_affine, chunk_voxels=700)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(ref).max() > 2.0  # the field and the affine move the points by millimetres
        assert np.abs(got - ref).max() < 1e-4
        assert np.array_equal(got, mapping.inverse_on_grid(shape, aff, with_affine=with_affine))


def _own_grid(labels: np.ndarray, aff: np.ndarray, pad: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same labels in the same world place, on a grid of their own: ``pad`` voxels of background
    added before each axis, the origin moved back by as many voxels."""
    out = np.zeros(tuple(n + p + 1 for n, p in zip(labels.shape, pad, strict=True)), labels.dtype)
    out[tuple(slice(p, p + n) for p, n in zip(pad, labels.shape, strict=True))] = labels
    a = aff.copy()
    a[:3, 3] -= a[:3, :3] @ np.asarray(pad, dtype=np.float64)
    return out, a


@pytest.mark.parametrize("n_labels", [5, VOTE_MIN_LABELS + 3, 120])
def test_labels_on_a_grid_of_their_own_are_placed_by_their_own_header(n_labels):
    """A label map on another grid than the moving image is sampled at the same moving world points from
    its own voxels: the same labels in the same world place on a padded grid come out the same; read as
    if on the moving grid they would land a few voxels off."""
    f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels = _case(n_labels)
    labels[[0, -1]] = labels[:, [0, -1]] = labels[:, :, [0, -1]] = 0  # background at the edges: either padding agrees
    ref = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels)
    assert len(np.unique(ref["labels"])) > 2
    own, own_aff = _own_grid(labels, m_aff, (3, 0, 2))
    for chunk in (None, 50):
        out = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, own, chunk_voxels=chunk,
                                  labels_affine4=own_aff)
        assert np.array_equal(out["labels"], ref["labels"])
        assert np.array_equal(out["warped"], ref["warped"])
    cropped = labels[:, :, :-1]  # same header, one slice less: its own grid, the same voxels where it has them
    out = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, cropped, labels_affine4=m_aff)
    assert (out["labels"] == ref["labels"]).mean() > 0.8


@pytest.mark.parametrize("nd", [2, 3])
def test_the_corner_vote_is_the_argmax_of_linearly_interpolated_one_hot_maps(nd):
    """labelwise_vote (time and memory flat in the number of labels) picks what interpolating every label's
    one-hot map linearly (zero outside the grid) and taking the first maximum picks, at random points inside,
    outside and across the edge; at half-voxel points, where labels tie exactly, the one-hot sums' float
    rounding decides (0.25000012 against 0.25) and the vote takes the smallest of the tied labels; where no
    corner lies inside the grid both give -1."""
    g = torch.Generator().manual_seed(nd)
    shape = (9, 8, 7)[:nd]
    blocks = torch.randint(0, 15, tuple((n + 1) // 2 for n in shape), generator=g)
    for a in range(nd):
        blocks = blocks.repeat_interleave(2, a)
    index = blocks[tuple(slice(0, n) for n in shape)].contiguous()  # indices into sorted values
    n_lab = int(index.max()) + 1
    top = torch.tensor(shape, dtype=torch.float32).view(nd, 1)
    pts = [torch.rand((nd, 4000), generator=g) * (top + 3) - 1.5,  # inside, outside and across the edge
           torch.randint(0, 8, (nd, 500), generator=g).float() + 0.5]  # half-voxel points: ties
    coords = torch.cat(pts, 1)
    onehot = torch.stack([(index == k).float() for k in range(n_lab)])[None]
    probs = sample(onehot, coords.view(1, nd, -1, *([1] * (nd - 1))))[0].reshape(n_lab, -1)
    want = labelwise_argmax(probs)
    got = labelwise_vote(index, coords)
    n_random = pts[0].shape[1]
    assert torch.equal(got[:n_random], want[:n_random])
    assert len(torch.unique(got)) > 5 and bool((got == 0).any()) and bool((got == -1).any())
    # at the ties: one of the labels carrying the largest weight, the smallest of them
    top = probs.max(0).values
    tied = probs >= top - 1e-5  # (labels, points)
    first = torch.where(top > 0, tied.float().argmax(0), -1)  # -1: no corner inside the grid
    assert torch.equal(got[n_random:], first[n_random:])
    assert int((tied.sum(0) > 1)[n_random:].sum()) > 50  # the half-voxel points do tie


def test_warp_labels_gives_the_same_map_with_either_label_wise_path(monkeypatch):
    """warp_labels (register's Dice before, masks and fixed labels on another grid, apply --labels) gives the
    same label map through one-hot maps and through the corner vote."""
    f_shape, f_aff, _, _, _, _, _, m_aff, labels = _case(VOTE_MIN_LABELS + 3)
    vote = warp_labels(labels, m_aff, f_shape, f_aff, None)
    import unireg.resample as resample_mod

    monkeypatch.setattr(resample_mod, "VOTE_MIN_LABELS", 10**9)  # one-hot maps for every count
    assert np.array_equal(warp_labels(labels, m_aff, f_shape, f_aff, None), vote)


@pytest.mark.parametrize("n_labels", [5, VOTE_MIN_LABELS + 3, 120])
def test_label_values_are_exact_whatever_their_size_and_zero_beyond_the_map(n_labels):
    """Label values beyond float32's integers (an Allen mouse atlas's 614454277) come out exact, by every
    label path (register's fixed-grid pass, warp_labels, apply's nearest), and a map with no 0 label gives 0
    where it does not reach (as ANTs/ITK interpolators give outside an image), not its smallest label."""
    from unireg import api
    from unireg.io.image import Image

    f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels = _case(n_labels)
    big = (614_454_277 + 3 * np.arange(n_labels)).astype(np.int32)  # sorted like the small ones
    big_labels = big[labels]
    t = t.copy()
    t[0, 3] += 6.0  # part of the fixed grid looks beyond the map
    small = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, labels + 1)["labels"]
    outside = small == 0
    assert 0.1 < outside.mean() < 0.9  # some fixed voxels see no label, most see one
    want = np.where(outside, 0, big[np.maximum(small - 1, 0)])
    got = resample_fixed_grid(f_shape, f_aff, w_aff, t, disp_w, jac_w, moving, m_aff, big_labels)["labels"]
    assert np.array_equal(got, want)

    def world_map(x, rows):
        return x + torch.as_tensor(t[:3, 3], dtype=x.dtype).view(3, *([1] * (x.dim() - 1)))

    small = warp_labels(labels + 1, m_aff, f_shape, f_aff, world_map)
    assert 0.1 < (small == 0).mean() < 0.9
    want = np.where(small == 0, 0, big[np.maximum(small - 1, 0)])
    assert np.array_equal(warp_labels(big_labels, m_aff, f_shape, f_aff, world_map), want)
    # apply -n nearest of an integer map through a transform (the moving map onto the fixed grid)
    small = api.apply([t], Image((labels + 1)[None], m_aff, None), (np.arange(np.prod(f_shape), dtype=np.float32).reshape(f_shape), f_aff),
                      interpolation="nearest").data[0]
    assert 0.1 < (small == 0).mean() < 0.9 and len(np.unique(small)) > min(n_labels, 4)
    got = api.apply([t], Image(big_labels[None], m_aff, None), (np.arange(np.prod(f_shape), dtype=np.float32).reshape(f_shape), f_aff),
                    interpolation="nearest").data[0]
    assert np.array_equal(got, np.where(small == 0, 0, big[np.maximum(small - 1, 0)]))
