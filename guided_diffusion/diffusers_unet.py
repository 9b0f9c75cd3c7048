"""Former import path: this module is guided_diffusion.models.diffusers_unet (moved; see docs/architecture.md)."""
import sys

from .models import diffusers_unet as _m

sys.modules[__name__] = _m
