"""Former import path: this module is guided_diffusion.models.lora (moved; see docs/architecture.md)."""
import sys

from .models import lora as _m

sys.modules[__name__] = _m
