"""One slice of a volume stored as a 3-D file: registered as a 2-D image in its own plane, written back as it came.

A 2-D image's plane is the world x-y plane (:mod:`unireg.spatial.frames`), as for PNG files, 2-D NIfTI and
``(X, Y, 1)`` axial slices (their warps are 2-D ITK fields, as ``antsRegistration -d 2`` writes them).  Two
layouts do not fit that: a file with its one voxel along another axis, ``(X, 1, Z)`` or ``(1, Y, Z)``, as
``fslroi`` and nibabel's ``img.slicer[:, j:j+1, :]`` write a coronal or sagittal slice (ITK reads it as a
3-D volume one voxel thick), and an ``(X, Y, 1)`` file whose plane is closer to coronal or sagittal than to
axial (its x-y block degenerate or nearly so).  Such a file is read as a 2-D image **in its plane's own frame**
(:func:`to_plane`): voxel axes the two long ones, in order; world coordinates turned by ``R``
(:func:`plane_rotation`), which takes the plane's normal to +z and its "up" (superior) to +y, so that the slice
is shown upright.  ``R`` depends on the plane alone (not on how the voxel axes lie in it), so two slices in
parallel planes share it and an in-plane rotation between them stays to be found.  Two slices whose planes meet
(two subjects' coronal slices, each scanned a little obliquely) are registered in the fixed slice's frame, the
moving one seen in it (:func:`in_fixed_plane`, up to :data:`MAX_TILT_DEG`; beyond, refused in one line).

:class:`SliceLayout` remembers the file; every output on such an image's grid goes back to it, as ITK and ANTs
read that file (``antsApplyTransforms -d 3``): images with the one-voxel axis put back and the file's own
affine (:meth:`SliceLayout.image_out`), displacement fields as 3-D fields whose vectors are the in-plane ones
turned back (:meth:`SliceLayout.field_out`), affine transforms as 3-D ones (:func:`matrix_out`); both also carry
the step from one slice's plane to the other's (:class:`PlanePair`: per voxel, so that every mapped point lies on
the other slice even where the two planes meet at an angle).  (An ``(X, Y, 1)`` file not in the x-y plane: ITK
reads a vector field on its grid as 2-D, as it would ANTs' own warp of it, and refuses the direction; ``unireg
apply`` reads it.)  Inputs the other way: a 3-D field on a one-voxel-thick grid (:func:`field_to_plane`) and a
3-D affine (:func:`matrix_to_plane`).  NumPy only (and :mod:`unireg.spatial.frames`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unireg.errors import UniRegError
from unireg.spatial import frames

__all__ = [
    "SliceLayout",
    "AXIAL_COS",
    "single_slice_axis",
    "to_plane",
    "plane_rotation",
    "field_to_plane",
    "matrix_to_plane",
    "matrix_out",
    "layout_of",
    "as_file",
    "field_as_file",
    "PlanePair",
    "MAX_TILT_DEG",
    "reframe",
    "in_fixed_plane",
]

# an (X, Y, 1) file whose in-plane columns project onto the world x-y plane with at least this share of their
# area (its plane within 45 degrees of axial) keeps the x-y reading (ITK's 2-D reading of the same file)
AXIAL_COS = math.cos(math.radians(45.0))


@dataclass(frozen=True, eq=False)
class SliceLayout:
    """How a single-slice file lies: its 3-D ``shape`` and 4x4 ``affine`` (RAS mm), the one-voxel ``axis``, and
    ``rotation`` (3x3, world -> the plane's frame) under which the 2-D image was registered."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    axis: int
    rotation: np.ndarray

    def image_out(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A 2-D image ``(*S)`` or ``(1, *S)`` on this grid as the file holds it: ``(array (1, *shape), affine)``
        (with its channel axis: a ``(1, Y, Z)`` volume would otherwise read as one channel of a 2-D image)."""
        arr = np.asarray(data)
        if arr.ndim == 3:
            arr = arr[0]
        return np.expand_dims(arr, self.axis)[None], self.affine.copy()

    def field_out(self, disp_mm: np.ndarray, across=0.0) -> tuple[np.ndarray, np.ndarray]:
        """A 2-D displacement field ``(2, *S)`` (the plane frame's x, y, mm) on this grid as a 3-D field
        ``(3, *shape)`` of world (RAS) vectors, and the file's affine; ``across``: mm along the frame's normal
        (a number, or ``(*S)``: from each voxel's plane to the other slice's, :class:`PlanePair`)."""
        d = np.asarray(disp_mm, dtype=np.float32)
        r = self.rotation.astype(np.float32)
        # world vector = R^T (u, v, across): the plane frame's axes are R's rows
        gap = np.asarray(across, dtype=np.float32)
        out = np.einsum("ck,k...->c...", r[:2].T, d) + np.einsum("c,...->c...", r[2], np.broadcast_to(gap, d.shape[1:]))
        return np.expand_dims(out, 1 + self.axis), self.affine.copy()


def single_slice_axis(shape) -> int | None:
    """The axis of a 3-D ``shape`` that is one voxel thick while the two others are longer; None otherwise."""
    if len(shape) != 3:
        return None
    ones = [k for k, n in enumerate(shape) if n == 1]
    return ones[0] if len(ones) == 1 and all(n >= 2 for n in shape if n != 1) else None


def plane_rotation(c0, c1) -> np.ndarray:
    """``R`` (3x3, world -> the plane's frame) of the plane spanned by ``c0`` and ``c1``: rows ``(e1, e2, n)``, ``n``
    its unit normal, ``e2`` the plane's "up" (world +z, superior, seen in the plane; world +y, anterior, for a plane
    within 45 degrees of axial), ``e1 = e2 x n`` its "right", signed towards world +x (+y where it is across x).
    Shown as a 2-D image is shown (``e1`` across, ``e2`` up) a coronal slice stands upright, as an axial one
    does; an axial plane is not turned at all (the identity).  ``R`` depends on the plane's orientation alone."""
    n = np.cross(np.asarray(c0, np.float64), np.asarray(c1, np.float64))
    n = n / np.linalg.norm(n)
    up = np.array([0.0, 1.0, 0.0]) if abs(n[2]) >= AXIAL_COS else np.array([0.0, 0.0, 1.0])
    e2 = up - (up @ n) * n
    e2 = e2 / np.linalg.norm(e2)
    e1 = np.cross(e2, n)
    tol = 1e-6  # a sign decided by rounding would give two parallel slices two frames
    if e1[0] < -tol or (abs(e1[0]) <= tol and e1[1] < 0):
        n, e1 = -n, -e1
    return np.stack([e1, e2, n])


def _axial_share(affine: np.ndarray) -> float:
    """Area share of the plane of columns 0 and 1 seen on the world x-y plane (1: axial, 0: contains z)."""
    c0, c1 = affine[:3, 0], affine[:3, 1]
    area = float(np.linalg.norm(np.cross(c0, c1)))
    return abs(float(c0[0] * c1[1] - c0[1] * c1[0])) / area if area > 0 else 1.0


def _turn(rotation: np.ndarray) -> np.ndarray:
    """The 4x4 homogeneous matrix of a 3x3 rotation (about the world origin)."""
    r4 = np.eye(4)
    r4[:3, :3] = rotation
    return r4


def _in_plane_first(affine: np.ndarray, axis: int) -> np.ndarray:
    """A slice file's 4x4 affine with its columns reordered: the two in-plane voxel axes first, the one-voxel
    ``axis`` third (the 2-D image's columns 0 and 1, and its normal)."""
    keep = [k for k in range(3) if k != axis]
    return np.asarray(affine, dtype=np.float64)[:, [*keep, axis, 3]]


def to_plane(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, SliceLayout] | None:
    """A 3-D array one voxel thick along one axis, or a 2-D array whose plane is far from axial (an ``(X, Y)``
    read from an ``(X, Y, 1)`` file), as a 2-D image in its plane's frame: ``(array (*S), 4x4 affine, layout)``;
    None for anything else: a volume, a 2-D image whose x-y reading stands (plane within 45 degrees of axial),
    a degenerate affine (the reader's own check says so)."""
    a = np.asarray(affine, dtype=np.float64)
    found = 2 if arr.ndim == 2 else single_slice_axis(arr.shape)
    if found is None:
        return None
    axis: int = found
    if arr.ndim == 2:
        arr = arr[:, :, None]
    perm = _in_plane_first(a, axis)
    if not np.all(np.isfinite(perm)) or np.linalg.norm(np.cross(perm[:3, 0], perm[:3, 1])) == 0:
        return None  # a degenerate affine: the reader's own check says so
    if axis == 2 and _axial_share(perm) >= AXIAL_COS:
        return None
    rot = plane_rotation(perm[:3, 0], perm[:3, 1])
    flat = _turn(rot) @ perm
    shape = (int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2]))
    return np.squeeze(arr, axis), flat, SliceLayout(shape, a.copy(), axis, rot)


def layout_of(image) -> SliceLayout | None:
    """The :class:`SliceLayout` an :class:`~unireg.io.image.Image` was read with (None: an ordinary image)."""
    return getattr(image, "meta", {}).get("slice_layout")


def as_file(image, data) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (``(*S)`` or ``(1, *S)``) on ``image``'s grid, and the affine, as ``image``'s file lies: a single
    slice read in its plane's frame goes back to its file's layout; anything else is ``(data, image.affine)``."""
    lay = layout_of(image)
    return (data, image.affine) if lay is None else lay.image_out(data)


def field_as_file(image, disp_mm, across_mm=0.0) -> tuple[np.ndarray, np.ndarray]:
    """A displacement field ``(ndim, *S)`` on ``image``'s grid as :func:`as_file` does for images: a single
    slice's 2-D field becomes the 3-D field of its file, ``across_mm`` (a number, or one per voxel ``(*S)``)
    along the frame's normal (:meth:`PlanePair.forward`, :meth:`PlanePair.inverse`)."""
    lay = layout_of(image)
    return (disp_mm, image.affine) if lay is None else lay.field_out(disp_mm, across_mm)


def _plane(affine4: np.ndarray) -> tuple[np.ndarray, float]:
    """``(g, h)``: the plane of a 2-D image with (frame) affine ``affine4`` as ``z' = g . (x', y') + h``."""
    a = np.asarray(affine4, dtype=np.float64)
    g = a[2, :2] @ np.linalg.inv(a[:2, :2])
    return g, float(a[2, 3] - g @ a[:2, 3])


def _frame_xy(image) -> np.ndarray:
    """``(2, *S)``: the frame's (x', y') of every voxel of a 2-D image."""
    shape = tuple(image.spatial_shape)
    idx = np.indices(shape, dtype=np.float64).reshape(2, -1).T
    return frames.voxel_to_world(idx, image.affine).T.reshape(2, *shape)


@dataclass(frozen=True)
class PlanePair:
    """The fixed and the moving slice's planes in their shared frame, ``z' = g . (x', y') + h`` each: what a 2-D
    map between them does across the planes (a 3-D map sends a point of one slice onto the other slice)."""

    g_fixed: np.ndarray
    h_fixed: float
    g_moving: np.ndarray
    h_moving: float

    @staticmethod
    def of(fixed, moving) -> PlanePair | None:
        """None where neither image is a single slice read in its plane's frame (2-D outputs: nothing across)."""
        if layout_of(fixed) is None and layout_of(moving) is None:
            return None
        gf, hf = _plane(fixed.affine)
        gm, hm = _plane(moving.affine)
        return PlanePair(gf, hf, gm, hm)

    @property
    def flat(self) -> bool:
        """One plane for both: the maps have nothing to do across."""
        return bool(np.all(self.g_fixed == self.g_moving)) and self.h_fixed == self.h_moving

    def _z(self, g: np.ndarray, h: float, xy: np.ndarray) -> np.ndarray:
        return np.einsum("c,c...->...", g, xy) + h

    def forward(self, fixed, disp: np.ndarray) -> np.ndarray:
        """``(*S)``, mm across, on the fixed grid: from each fixed voxel ``p`` (on the fixed plane) to where its
        in-plane map ``p + u`` lies on the moving plane."""
        xy = _frame_xy(fixed)
        d = np.asarray(disp, dtype=np.float64)
        return (self._z(self.g_moving, self.h_moving, xy + d) - self._z(self.g_fixed, self.h_fixed, xy)).astype(
            np.float32
        )

    def inverse(self, moving, disp: np.ndarray) -> np.ndarray:
        """``(*S_m)``, on the moving grid: from each moving voxel to where its inverse map lies on the fixed plane."""
        xy = _frame_xy(moving)
        d = np.asarray(disp, dtype=np.float64)
        return (self._z(self.g_fixed, self.h_fixed, xy + d) - self._z(self.g_moving, self.h_moving, xy)).astype(
            np.float32
        )

    def at_centre(self, fixed) -> float:
        """mm across at the fixed image's centre, the identity in the plane (report.json)."""
        centre = (np.asarray(fixed.spatial_shape, dtype=np.float64) - 1) / 2.0
        c = frames.voxel_to_world(centre[None], fixed.affine)[0]
        return float(self._z(self.g_moving, self.h_moving, c) - self._z(self.g_fixed, self.h_fixed, c))

    def tilt_deg(self) -> float:
        """Angle between the two planes."""
        nf, nm = np.append(-self.g_fixed, 1.0), np.append(-self.g_moving, 1.0)
        cos = abs(nf @ nm) / (np.linalg.norm(nf) * np.linalg.norm(nm))
        return float(np.degrees(np.arccos(min(1.0, cos))))


# two slices whose planes meet at up to this angle are registered in the fixed slice's plane (the moving one
# seen in it, as ITK's 2-D reading sees an oblique slice); beyond it they are refused
MAX_TILT_DEG = 30.0


def _normal(image) -> np.ndarray:
    lay = layout_of(image)
    if lay is not None:
        return lay.rotation[2]
    a = np.asarray(image.affine, dtype=np.float64)
    n = np.cross(a[:3, 0], a[:3, 1])
    return n / np.linalg.norm(n)


def _orientation(image) -> str:
    lay = layout_of(image)
    if lay is None:
        return "in the x-y plane"
    n = lay.rotation[2]  # the plane's normal in world coordinates
    return "in the plane with normal (" + ", ".join(f"{v:.2f}" for v in n) + ")"


def reframe(image, rotation: np.ndarray):
    """A 2-D image seen in the frame ``rotation`` (another slice's): its flat affine and layout turned (a plain
    2-D image in the x-y plane gets the layout of an ``(X, Y, 1)`` file)."""
    import dataclasses

    lay = layout_of(image)
    if lay is None:
        a = np.asarray(image.affine, dtype=np.float64)
        x, y = image.spatial_shape
        lay = SliceLayout((int(x), int(y), 1), a.copy(), 2, rotation)
    else:
        lay = dataclasses.replace(lay, rotation=np.asarray(rotation, dtype=np.float64))
    flat = _turn(rotation) @ _in_plane_first(lay.affine, lay.axis)
    return dataclasses.replace(image, affine=flat, meta={**image.meta, "slice_layout": lay})


def in_fixed_plane(fixed, image, name: str = "moving image"):
    """``image`` (2-D) in the fixed image's frame: as it is where both lie in one frame (or neither is a single
    slice read in its plane's), seen in the fixed slice's plane where the two planes meet at up to
    :data:`MAX_TILT_DEG`; beyond that a UniRegError naming ``image``'s file (2-D registration has no common plane)."""
    if fixed.ndim != 2 or image.ndim != 2:
        return image
    a, b = layout_of(fixed), layout_of(image)
    if a is None and b is None:
        return image
    r_fixed = np.eye(3) if a is None else a.rotation
    if b is not None and np.abs(b.rotation - r_fixed).max() < 1e-9:
        return image
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(_normal(fixed) @ _normal(image)))))))
    if tilt > MAX_TILT_DEG:
        raise UniRegError(
            f"{name} is not in the fixed image's plane (it lies {_orientation(image)}, the fixed image "
            f"{_orientation(fixed)}: {tilt:.0f} degrees apart, over {MAX_TILT_DEG:.0f}); give 2-D slices of one "
            "orientation",
            getattr(image, "path", None),
        )
    return reframe(image, r_fixed)


def field_to_plane(disp_mm: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A 3-D displacement field ``(3, *shape)`` (RAS mm) on a one-voxel-thick grid as the 2-D field of that
    plane (``(2, *S)`` in the plane's frame, and the grid's 2-D affine as :func:`to_plane` gives it); None where
    the grid is not one voxel thick.  The component across the plane is dropped (a slice has nowhere to go)."""
    d = np.asarray(disp_mm)
    if d.ndim != 4 or d.shape[0] != 3:
        return None
    got = to_plane(d[0], affine)
    if got is None:
        return None
    _, flat, lay = got
    turned = np.einsum("ck,k...->c...", lay.rotation[:2].astype(d.dtype), d)
    return np.squeeze(turned, 1 + lay.axis), flat


def matrix_to_plane(matrix4: np.ndarray, layout: SliceLayout) -> np.ndarray:
    """A 4x4 world affine transform (RAS mm) in ``layout``'s plane frame, 4x4 (its x-y block is the 2-D map)."""
    r4 = _turn(layout.rotation)
    return r4 @ np.asarray(matrix4, dtype=np.float64) @ r4.T


def matrix_out(matrix_2d: np.ndarray, layout: SliceLayout, planes: PlanePair | None = None) -> np.ndarray:
    """A 2-D transform ``(3, 3)`` of the plane frame as the 4x4 world transform it is: across the planes it sends
    a point of the fixed slice onto the moving slice (``planes``; None: nothing across), and a point off the fixed
    plane keeps its distance from it."""
    m = np.asarray(matrix_2d, dtype=np.float64)
    e = np.eye(4)
    e[np.ix_([0, 1, 3], [0, 1, 3])] = m
    if planes is not None:  # z' -> z'_moving(T(x', y')) + (z' - z'_fixed(x', y'))
        e[2, :2] = planes.g_moving @ m[:2, :2] - planes.g_fixed
        e[2, 3] = planes.g_moving @ m[:2, 2] + planes.h_moving - planes.h_fixed
    r4 = _turn(layout.rotation)
    return r4.T @ e @ r4
