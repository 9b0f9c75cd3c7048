"""The tools beside the scripts (``scripts/tools``) are imported by their tests as ``tools.*``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def text_task_dict(tmp_path):
    """``write(size, channels)`` -> the path of a Continual-Diffusers task dict of random images with
    text labels: task 1 red circles and blue squares (6 images), task 2 green stars (4)."""
    from guided_diffusion.data import write_task_dict

    def write(size: int, channels: int) -> str:
        rng = np.random.RandomState(0)
        path = str(tmp_path / "tasks.npz")
        write_task_dict(path, {1: {"images": rng.randint(0, 255, (6, size, size, channels), dtype=np.uint8),
                                   "labels": np.array(["a red circle", "a blue square"] * 3)},
                               2: {"images": rng.randint(0, 255, (4, size, size, channels), dtype=np.uint8),
                                   "labels": np.array(["a green star"] * 4)}})
        return path

    return write
