"""The registration pipeline's stages: small functions passing one typed :class:`State`.

``pipeline.register_images`` runs them in order; each can be run, tested or replaced on its own:

``prepare`` (working and native grids) -> ``affine`` (multi-start, do-no-harm) -> ``features`` ->
``network`` (do-no-harm) -> ``refine`` (coarse, working, native levels) -> ``integrate`` ->
``deformable_gate`` (do-no-harm) -> ``qc`` -> ``resample`` -> ``report``.
"""

from .state import Options, State, Timer

__all__ = ["Options", "State", "Timer"]
