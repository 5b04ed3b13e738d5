import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from unireg.reports.qc import FOLD_COLOR, before_image, planes_for, render_qc_png
from unireg.spatial.world import pull


def _decode(path) -> np.ndarray:
    """The PNG fully decoded, ``(H, W, 3)`` uint8 (a truncated or corrupt file raises)."""
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _png_size(path):
    h, w, _ = _decode(path).shape
    return w, h


def _fold_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.all(rgb == np.array(FOLD_COLOR, np.uint8), axis=-1)


def _row_band(rgb: np.ndarray, r: int) -> np.ndarray:
    return rgb[40 + 230 * r + 5: 40 + 230 * (r + 1) - 5]


def _case(shape):
    z = np.indices(shape, dtype=np.float32)
    fixed = np.exp(-sum(((z[k] - n / 2) / (n / 4)) ** 2 for k, n in enumerate(shape))).astype(np.float32)
    disp = np.stack([np.sin(z[0] / 3)] * len(shape)).astype(np.float32)
    jac = np.ones(shape, np.float32)
    jac[tuple(slice(n // 2 - 1, n // 2 + 1) for n in shape)] = -1.0  # on every mid-plane
    return fixed, disp, jac


@pytest.mark.parametrize("shape,spacing,rows", [((20, 16, 10), (1.0, 1.0, 3.0), 3), ((24, 18), (0.5, 1.0), 1)])
def test_qc_png_written_with_expected_size(tmp_path, shape, spacing, rows):
    fixed, disp, jac = _case(shape)
    out = render_qc_png(tmp_path / "qc.png", fixed, np.roll(fixed, 2, 0), fixed, disp, jac, spacing, title="t")
    assert out == tmp_path / "qc.png"
    assert _png_size(out) == (1320, 40 + 230 * rows)
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]  # no temp file left behind
    rgb = _decode(out)
    folds = _fold_pixels(rgb)
    assert folds[:, 1100:].any() and not folds[:, :1100].any()  # folds marked, in the det J column only


def test_qc_png_without_folds_has_no_fold_colour(tmp_path):
    fixed, disp, _ = _case((24, 18))
    out = render_qc_png(tmp_path / "qc.png", fixed, fixed, fixed, disp, np.ones_like(fixed), (1.0, 1.0))
    assert not _fold_pixels(_decode(out)).any()


def test_qc_png_accepts_world_field_and_channel_axis(tmp_path):
    fixed, disp, jac = _case((12, 10, 8))
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    render_qc_png(tmp_path / "q.png", fixed[None], fixed, fixed, disp, jac, affine=aff)
    assert _png_size(tmp_path / "q.png") == (1320, 730)
    with pytest.raises(ValueError):
        render_qc_png(tmp_path / "bad.png", fixed, fixed[:-1], fixed, disp, jac)
    assert not (tmp_path / "bad.png").exists()


def test_planes_orientation():
    # RAS identity: axial shows x reversed (radiological) and y upwards
    names = [p.name for p in planes_for((5, 6, 7))]
    assert names == ["sagittal", "coronal", "axial"]
    ax = planes_for((5, 6, 7))[2]
    vol = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    img = ax.take(vol)
    assert img.shape == (6, 5)
    assert img[0, 0] == vol[4, 5, 3]  # top-left: patient left (x max), anterior (y max)
    # voxel_coords agree with take on an unresampled plane
    from scipy.ndimage import map_coordinates

    for p in planes_for(vol.shape, np.diag([1.0, -2.0, 1.0, 1.0])):
        img = p.take(vol)
        assert np.array_equal(map_coordinates(vol, p.voxel_coords(vol.shape, img.shape), order=0), img)

def test_png_read_by_io_is_shown_upright(tmp_path):
    from PIL import Image as PILImage

    from unireg.io.image import read_image

    a = (np.arange(12).reshape(4, 3) * 20).astype(np.uint8)
    PILImage.fromarray(a).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    (p,) = planes_for(img.spatial_shape, img.affine)
    assert np.array_equal(p.take(img.data[0]), a)


def test_qc_png_on_mni_sized_volume(tmp_path):
    """A full-size volume renders (timing lives in benchmarks, not in assertions)."""
    shape = (197, 233, 189)
    fixed = np.random.default_rng(0).random(shape, dtype=np.float32)
    disp = np.zeros((3,) + shape, np.float32)
    jac = np.ones(shape, np.float32)
    render_qc_png(tmp_path / "warm.png", fixed[:20, :20, :20], fixed[:20, :20, :20], fixed[:20, :20, :20],
                  disp[:, :20, :20, :20], jac[:20, :20, :20])  # imports
    jac[90:108, 108:126, 86:104] = -1.0  # a fold around the centre: on all three mid-planes
    out = render_qc_png(tmp_path / "qc.png", fixed, fixed, fixed, disp, jac, (1.0, 1.0, 1.0))
    rgb = _decode(out)
    assert rgb.shape == (730, 1320, 3)
    for r in range(3):
        assert _fold_pixels(_row_band(rgb, r))[:, 1100:].sum() > 20, f"plane {r} shows no fold"


def test_before_image_is_moving_by_world_coordinates_only():
    """The one "before" routine: moving pulled onto the fixed grid by world position, channels
    averaged; here the fixed grid starts one moving voxel (2 mm) further along x."""
    m_aff = np.diag([2.0, 1.0, 1.0, 1.0])
    f_aff = m_aff.copy()
    f_aff[0, 3] = 2.0
    ramp = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    moving = np.stack([ramp, 3 * ramp])  # two channels: mean is 2 * ramp
    out = before_image(moving, m_aff, (5, 4), f_aff)
    assert out.shape == (5, 4) and np.allclose(out, 2 * ramp[1:], atol=1e-5)
    same = before_image(moving[:1], m_aff, (6, 4), m_aff)
    assert np.allclose(same, pull(torch.from_numpy(moving[:1]), m_aff, (6, 4), m_aff)[0].numpy())
