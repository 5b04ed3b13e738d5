"""The registration pipeline's stages: small functions passing one typed :class:`State`.

``pipeline.register_images`` runs them in order; each can be run, tested or replaced on its own:

``prepare`` (working and native grids) -> ``affine`` (multi-start, do-no-harm) -> ``features`` ->
``network`` (do-no-harm; a cascade of passes when nothing refines after it) -> ``refine`` (coarse,
working, native levels; on a multi-core CPU the native features are computed by a worker thread
meanwhile) -> ``integrate`` -> ``deformable_gate`` (do-no-harm) -> ``polish`` (the finest level with
intensity MI beside the features, on a kept deformation; gated) -> ``qc`` and ``resample`` (side by
side on a multi-core CPU: ``finish.qc_and_resample``) -> ``report``.
"""

from .state import Options, State, Timer

__all__ = ["Options", "State", "Timer"]
