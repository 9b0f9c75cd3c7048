"""ADM's classifier_sample.py: image_sample.py with classifier guidance (the same script, the same flags).

Usage (ADM's command, with this project's run folders):
    python scripts/classifier_sample.py --config yaml/mnist/classifier.yaml \
        --model_path experiments/mnist_iid/ema_0.999_004000.pt \
        --classifier_path experiments/mnist_iid/classifier/model001000.pt --classifier_scale 1.0

Every option is image_sample.py's (``python scripts/image_sample.py --help``); ADM's classifier flags
(--classifier_width, --classifier_depth, ...) set the config's classifier section. Without
--classifier_path it refuses: that is image_sample.py.
"""

import os
import runpy
import sys

from guided_diffusion.launch import cli
from guided_diffusion.runtime.config import ConfigError


def main() -> int:
    if any(w in ("-h", "--help") for w in sys.argv[1:]):
        print(__doc__)
    elif not any(w.startswith(("--classifier_path", "sample.classifier_path=")) for w in sys.argv[1:]):
        raise ConfigError("classifier_sample.py guides with a classifier: give --classifier_path (a model of "
                          "scripts/classifier_train.py); without guidance use scripts/image_sample.py")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "image_sample.py")
    return runpy.run_path(script, run_name="image_sample")["main"]()


if __name__ == "__main__":
    cli.run_main(main)
