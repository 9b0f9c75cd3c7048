"""ADM's import path: this module is guided_diffusion.diffusion.resample (moved; see docs/architecture.md)."""
import sys

from .diffusion import resample as _m

sys.modules[__name__] = _m
