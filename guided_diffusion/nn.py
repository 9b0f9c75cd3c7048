"""ADM's import path: this module is guided_diffusion.models.nn (moved; see docs/architecture.md)."""
import sys

from .models import nn as _m

sys.modules[__name__] = _m
