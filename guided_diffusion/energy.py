"""Former import path: this module is guided_diffusion.models.energy (moved; see docs/architecture.md)."""
import sys

from .models import energy as _m

sys.modules[__name__] = _m
