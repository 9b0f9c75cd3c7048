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


@pytest.fixture(scope="session")
def tiny_eval_classifier(tmp_path_factory):
    """Overrides that give a run a tiny random evaluation classifier (for presets that evaluate after
    every task, as the main job's does), instead of training the real one on a fresh checkout (2.5 min)."""
    import torch

    from guided_diffusion.evaluation.domain_classifier import DomainClassifier, save_domain_classifier

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("eval_clf") / "clf.safetensors")
    save_domain_classifier(DomainClassifier(1, 28, 10, width=4, feature_dim=8), path,
                           {"dataset": "mnist5k", "split": "train", "test_accuracy": 0.1})
    return [f"evaluation.classifier_path={path}", "evaluation.train_classifier=false"]
