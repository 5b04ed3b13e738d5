"""``python -m unireg.training`` / ``torchrun --nproc_per_node N -m unireg.training ...``."""

import sys

from .trainer import main

sys.exit(main())
