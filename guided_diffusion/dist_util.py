"""ADM's import path: this module is guided_diffusion.runtime.dist_util (moved; see docs/architecture.md)."""
import sys

from .runtime import dist_util as _m

sys.modules[__name__] = _m
