"""ADM's import path: this module is guided_diffusion.diffusion.gaussian_diffusion (moved; see docs/architecture.md)."""
import sys

from .diffusion import gaussian_diffusion as _m

sys.modules[__name__] = _m
