"""UniReg: universal deformable registration from frozen local features.

Implements the design of Shao & Joshi, "Domain-Shift Immunity in Deep Deformable Registration via
Local Feature Representations" (arXiv 2512.23142): a frozen feature extractor feeds a UNet that
predicts a stationary velocity field, integrated into a diffeomorphism.
"""

__version__ = "0.1.0"

__all__ = ["register", "apply", "load_model", "RegistrationResult", "__version__"]


def __getattr__(name):  # lazy: `import unireg` stays cheap for the CLI
    if name in ("register", "apply", "load_model", "RegistrationResult", "apply_points"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
