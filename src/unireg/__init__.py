"""UniReg: universal deformable registration from frozen local features.

Implements the design of Shao & Joshi, "Domain-Shift Immunity in Deep Deformable Registration via
Local Feature Representations" (arXiv 2512.23142): a frozen feature extractor feeds a UNet that
predicts a stationary velocity field, integrated into a diffeomorphism.
"""

import os as _os

# OpenMP threads that spin while they wait turn every parallel torch op into a stall when other
# processes share the cores: on this project's 2-core machine under load 7, a 2-D registration took
# 42.9 s with 2 spinning threads, 0.78 s with passive waiting (1.3 s with 1 thread).  Must be set
# before torch loads its OpenMP runtime; a value the user exported wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["register", "apply", "load_model", "RegistrationResult", "__version__"]


def __getattr__(name):  # lazy: `import unireg` stays cheap for the CLI
    if name in ("register", "apply", "load_model", "RegistrationResult", "apply_points"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
