"""ADM's import path: this module is guided_diffusion.diffusion.losses (moved; see docs/architecture.md)."""
import sys

from .diffusion import losses as _m

sys.modules[__name__] = _m
