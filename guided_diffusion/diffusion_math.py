"""Former import path: this module is guided_diffusion.diffusion.diffusion_math (moved; see docs/architecture.md)."""
import sys

from .diffusion import diffusion_math as _m

sys.modules[__name__] = _m
