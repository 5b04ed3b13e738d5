import pytest
import torch

from unireg.spatial.grid import (
    affine_coords,
    channels_last,
    coords_vox_to_norm,
    identity_coords,
    random_box_voxel_draws,
    random_box_voxels,
    resize_field,
    sample,
    warp,
)


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_zero_field_is_identity(shape):
    img = torch.rand((1, 2) + shape)
    out = warp(img, torch.zeros((1, len(shape)) + shape))
    assert torch.allclose(out, img, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 10), (6, 7, 9)])
def test_integer_shift_gives_shifted_image(shape):
    nd = len(shape)
    img = torch.rand((1, 1) + shape, dtype=torch.float64)
    for axis in range(nd):
        disp = torch.zeros((1, nd) + shape, dtype=torch.float64)
        disp[:, axis] = 2.0  # out(x) = img(x + 2 e_axis)
        out = warp(img, disp)
        n = shape[axis]
        got = out.narrow(2 + axis, 0, n - 2)
        want = img.narrow(2 + axis, 2, n - 2)
        assert torch.equal(got, want) or torch.allclose(got, want, atol=1e-12)
        # beyond the border: zeros
        assert out.narrow(2 + axis, n - 2, 2).abs().max() < 1e-12


def test_norm_coords_flip_order():
    coords = identity_coords((3, 5)).unsqueeze(0)
    g = coords_vox_to_norm(coords, (3, 5))
    # last axis is (x, y) = (axis1, axis0); corners map to -1 / +1
    assert torch.allclose(g[0, 0, 0], torch.tensor([-1.0, -1.0]))
    assert torch.allclose(g[0, 2, 4], torch.tensor([1.0, 1.0]))
    assert torch.allclose(g[0, 0, 4], torch.tensor([1.0, -1.0]))


def test_resize_field_rescales_values():
    # a constant shift of 2 voxels on a 5-grid is 4.5 voxels... no: (N_out-1)/(N_in-1) = 8/4 -> 4 voxels on a 9-grid
    disp = torch.full((1, 1, 5), 2.0)
    disp2 = torch.zeros((1, 2, 5, 5))
    disp2[:, 0] = 2.0
    out = resize_field(disp2, (9, 5))
    assert torch.allclose(out[:, 0], torch.full((1, 9, 5), 4.0))
    assert torch.allclose(out[:, 1], torch.zeros(1, 9, 5))
    del disp


def test_resized_linear_field_describes_same_world_map():
    # field u(p) = 0.1 * p on a coarse grid; on the fine grid it must describe the same mapping
    coarse = identity_coords((5, 5), dtype=torch.float64).unsqueeze(0) * 0.1
    fine = resize_field(coarse, (9, 9))
    expected = identity_coords((9, 9), dtype=torch.float64).unsqueeze(0) * 0.1
    assert torch.allclose(fine, expected, atol=1e-12)


def test_affine_coords_translation():
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    c = affine_coords(m, (2, 3, 4))
    ident = identity_coords((2, 3, 4), dtype=torch.float64).unsqueeze(0)
    d = c - ident
    assert torch.allclose(d[0, 0], torch.ones(2, 3, 4, dtype=torch.float64))
    assert torch.allclose(d[0, 1], torch.full((2, 3, 4), -2.0, dtype=torch.float64))
    assert torch.allclose(d[0, 2], torch.full((2, 3, 4), 0.5, dtype=torch.float64))


def test_sample_gradcheck_float64():
    img = torch.rand(1, 1, 4, 5, dtype=torch.float64)
    coords = (identity_coords((3, 3), dtype=torch.float64).unsqueeze(0) + 0.37).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: sample(img, c), (coords,))


def test_warp_gradcheck_3d():
    img = torch.rand(1, 1, 4, 4, 4, dtype=torch.float64)
    disp = (0.3 * torch.rand(1, 3, 4, 4, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: warp(img, d), (disp,))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_threaded_3d_sampling_is_one_call(monkeypatch, mode, padding):
    """With several torch threads, 3-D sampling is cut into chunks sampled by worker threads: values
    and gradients w.r.t. the points must be exactly one call's, the image's gradient (a sum over the
    chunks) equal to float rounding."""
    img0 = torch.rand(1, 5, 20, 24, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(1, 3, 40_000, 1, 1, generator=g) * torch.tensor([22.0, 27.0, 31.0]).view(1, 3, 1, 1, 1) - 2.0

    def run(threads):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        p = pts.clone().requires_grad_(True)
        img = img0.clone().requires_grad_(True)
        out = sample(img, p, mode=mode, padding_mode=padding)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), p.grad, img.grad, out.grad_fn

    one, g1, i1, fn1 = run(1)
    two, g2, i2, fn2 = run(3)  # 3 chunks of unequal size
    assert type(fn2).__name__.startswith("_ThreadedSample3d") and not type(fn1).__name__.startswith("_Threaded")
    assert torch.equal(one, two) and torch.equal(g1, g2)
    assert i1.abs().max() > 1.0 and torch.allclose(i1, i2, rtol=1e-5, atol=1e-5)


def test_with_caller_threads_carries_the_callers_torch_thread_count_into_a_worker():
    """A pool's thread keeps the torch thread count it started with (the pipeline's workers live as
    long as the process); the wrapper gives each job the caller's count at submission."""
    from concurrent.futures import ThreadPoolExecutor

    from unireg.spatial.grid import with_caller_threads

    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(1)
    try:
        started = pool.submit(torch.get_num_threads).result()  # the worker thread exists from here
        want = started + 1
        torch.set_num_threads(want)
        stale = pool.submit(torch.get_num_threads).result()
        got = pool.submit(with_caller_threads(torch.get_num_threads)).result()
    finally:
        torch.set_num_threads(before)
        pool.shutdown()
    assert stale == started  # what a job without the wrapper sees
    assert got == want


@pytest.mark.parametrize("shape", [(23, 19), (13, 11, 9)])
def test_channels_last_samples_the_same_values_and_gradients(shape):
    """The refinement samples its features laid out channels-last (a corner's channels in one cache
    line): same values and gradients w.r.t. the points as the default layout, to the bit."""
    nd = len(shape)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 12, *shape, generator=g)
    cl = channels_last(image)
    assert torch.equal(cl, image) and not cl.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    pts = torch.rand(1, nd, 5000, *([1] * (nd - 1)), generator=g) * torch.tensor(shape).view(1, nd, *([1] * nd)) - 0.5
    out = []
    for img in (image, cl):
        p = pts.clone().requires_grad_(True)
        v = sample(img, p)
        (v * torch.arange(12.0).view(1, 12, *([1] * nd))).sum().backward()
        out.append((v.detach(), p.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("s", [-7, -3, -1, 0, 1, 2, 4, 9])
def test_replicate_shift_parts_assemble_the_shifted_image(s):
    """The pieces put together give ``x[clamp(i + s)]`` along the axis (replicated edges), even for
    a shift longer than the axis."""
    from unireg.spatial.grid import replicate_shift_parts

    x = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).reshape(2, 3, 5, 4)
    for dim in (2, 3):
        n = x.shape[dim]
        idx = torch.tensor([min(max(i + s, 0), n - 1) for i in range(n)])
        ref = x.index_select(dim, idx)
        y = torch.full_like(x, float("nan"))
        for start, length, values in replicate_shift_parts(x, dim, s):
            y.narrow(dim, start, length).copy_(values.expand_as(y.narrow(dim, start, length)))
        assert torch.equal(y, ref)


def test_random_box_voxel_draws_are_successive_draws():
    """A loop's points drawn at once (one copy to the device) are the points and the generator state of
    one draw per step."""
    lo, hi = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([9.0, 5.0, 7.0], dtype=torch.float64)
    strides = torch.tensor([48, 8, 1])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    each = [random_box_voxels(lo, hi, strides, 50, g1, torch.float64) for _ in range(7)]
    idx, pick = random_box_voxel_draws(lo, hi, strides, 50, 7, g2, torch.float64)
    assert torch.equal(idx, torch.stack([i for i, _ in each])) and torch.equal(pick, torch.stack([p for _, p in each]))
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
