"""A frozen held-out evaluation suite: pairs with a known fixed->moving map that no training code draws.

Modules: :mod:`.grids` (voxel grids as scanners write them), :mod:`.deformations` (diffeomorphic true
maps, exact forward and inverse), :mod:`.intensity` (contrast maps, bias, noise), :mod:`.phantoms`
(MNI at 1 mm and random label / body-like phantoms), :mod:`.cases` (the frozen case list, ``HELD_OUT``).
Everything is seeded from constants committed in :mod:`.cases`; training code must never import this
package (``tests/evaluation/test_suite_isolation.py``).
"""
