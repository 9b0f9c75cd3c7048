"""The built-in feature extractors by name: importing this module registers them (``domain``:
``domain_classifier``; ``inception``: ``inception``), ``build_feature_extractor`` builds one. The
registry (``features.EXTRACTORS``) and the extractor interface live in ``features``."""

from __future__ import annotations

from . import domain_classifier, inception  # noqa: F401  (each registers its kind)
from .features import EXTRACTORS, FeatureExtractor


def build_feature_extractor(kind: str, **opts) -> FeatureExtractor:
    """``domain`` (opts: ``classifier_path``) or ``inception`` (opts: ``weights_path``)."""
    if kind not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {kind!r}; valid: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[kind](**opts)
