"""The ``classifier`` section of a config: the noisy classifier for guidance (``scripts/classifier_train.py``,
``image_sample.py``; ``experiment.build_classifier``), registered on import."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import ConfigError, register_section_schema


@dataclass
class ClassifierConfig:
    """The noisy classifier for guidance (ADM's ``classifier_defaults``, without the prefix)."""

    width: int = 128
    depth: int = 2
    attention_resolutions: str = "32,16,8"
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    pool: str = "attention"  # adaptive | attention | spatial | spatial_v2
    use_fp16: bool = False
    noised: bool = True
    iterations: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    anneal_lr: bool = False
    log_interval: int = 10
    eval_interval: int = 100
    save_interval: int = 500


def check_classifier(c: ClassifierConfig, cfg) -> None:
    try:
        [float(v) for v in c.attention_resolutions.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"classifier.attention_resolutions must be a comma-separated list of numbers, "
                          f"got {c.attention_resolutions!r}") from None


register_section_schema("classifier", None, ClassifierConfig, check_classifier,
                        choices={"pool": ("adaptive", "attention", "spatial", "spatial_v2")})
