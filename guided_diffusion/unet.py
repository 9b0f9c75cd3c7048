"""ADM's import path: this module is guided_diffusion.models.unet (moved; see docs/architecture.md)."""
import sys

from .models import unet as _m

sys.modules[__name__] = _m
