from pathlib import Path
import struct
import time

import numpy as np
import pytest

from unireg.reports.qc import planes_for, render_qc_png


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _case(shape):
    z = np.indices(shape, dtype=np.float32)
    fixed = np.exp(-sum(((z[k] - n / 2) / (n / 4)) ** 2 for k, n in enumerate(shape))).astype(np.float32)
    disp = np.stack([np.sin(z[0] / 3)] * len(shape)).astype(np.float32)
    jac = np.ones(shape, np.float32)
    jac[(slice(2, 4),) * len(shape)] = -1.0
    return fixed, disp, jac


@pytest.mark.parametrize("shape,spacing,rows", [((20, 16, 10), (1.0, 1.0, 3.0), 3), ((24, 18), (0.5, 1.0), 1)])
def test_qc_png_written_with_expected_size(tmp_path, shape, spacing, rows):
    fixed, disp, jac = _case(shape)
    out = render_qc_png(tmp_path / "qc.png", fixed, np.roll(fixed, 2, 0), fixed, disp, jac, spacing, title="t")
    assert out == tmp_path / "qc.png"
    assert _png_size(out) == (1320, 40 + 230 * rows)
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]  # no temp file left behind


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
    out = render_qc_png(tmp_path / "qc.png", fixed, fixed, fixed, disp, jac, (1.0, 1.0, 1.0))
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
