"""Former import path: this module is guided_diffusion.pretrained.text_encoder (moved; see docs/architecture.md)."""
import sys

from .pretrained import text_encoder as _m

sys.modules[__name__] = _m
