"""ADM's import path: this module is guided_diffusion.diffusion.respace (moved; see docs/architecture.md)."""
import sys

from .diffusion import respace as _m

sys.modules[__name__] = _m
