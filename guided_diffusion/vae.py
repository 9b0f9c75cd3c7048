"""Former import path: this module is guided_diffusion.models.vae (moved; see docs/architecture.md)."""
import sys

from .models import vae as _m

sys.modules[__name__] = _m
