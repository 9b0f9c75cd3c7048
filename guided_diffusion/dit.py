"""Former import path: this module is guided_diffusion.models.dit (moved; see docs/architecture.md)."""
import sys

from .models import dit as _m

sys.modules[__name__] = _m
