"""Fixed and moving masks (nonzero = use), as ANTs and elastix take them.

A mask restricts where the similarity is *measured* (affine, refinement, failure score); the
images themselves are not zeroed, so the features near the mask's edge still see real anatomy.
Masks arrive as :class:`~unireg.io.image.Image` on their image's grid and are resampled here onto
whatever grid a stage works on (linear interpolation of the 0/1 map, kept where >= 0.5).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .spatial.world import pull

__all__ = ["mask_on_grid", "MIN_MASK_FRACTION"]

# a mask that leaves fewer voxels than this on a stage's grid is a user error (wrong file or grid)
MIN_MASK_FRACTION = 1e-3


def mask_on_grid(
    mask,
    shape: Sequence[int],
    affine4: np.ndarray,
    world_map: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``mask`` (an Image, nonzero = use) resampled onto the grid ``(shape, affine4)`` -> bool ``(*shape)``.

    ``world_map`` (as for :func:`unireg.spatial.world.pull`) maps grid world points into the mask's
    world first, e.g. the fixed->moving affine for a moving mask seen from the fixed side.
    """
    m = torch.from_numpy((np.asarray(mask.data[0]) != 0).astype(np.float32))[None]
    out = pull(m, mask.affine, tuple(shape), affine4, world_map=world_map)[0]
    return out >= 0.5
