"""The tools beside the scripts (``scripts/tools``) are imported by their tests as ``tools.*``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
