"""Former import path: this module is guided_diffusion.models.prompts (moved; see docs/architecture.md)."""
import sys

from .models import prompts as _m

sys.modules[__name__] = _m
