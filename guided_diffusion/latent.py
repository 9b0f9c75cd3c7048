"""Former import path: this module is guided_diffusion.pretrained.latent (moved; see docs/architecture.md)."""
import sys

from .pretrained import latent as _m

sys.modules[__name__] = _m
