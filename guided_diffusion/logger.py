"""ADM's import path: this module is guided_diffusion.runtime.logger (moved; see docs/architecture.md)."""
import sys

from .runtime import logger as _m

sys.modules[__name__] = _m
