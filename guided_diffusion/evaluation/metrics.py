"""The metrics of ``evaluate_sets`` by name: one small function each, with what it needs declared.

A metric is a function of the inputs of one evaluation (``MetricInputs``: the samples' features,
the reference's statistics and, where extracted, its features; the protocol text) that returns its
``MetricRow``s, registered by name with the inputs it needs::

    @register_metric("my_metric", needs=("reference_features",))
    def my_metric(x: MetricInputs) -> List[MetricRow]:
        ...

``evaluate_sets`` extracts the reference's features only when a wanted metric needs them, and
skips, silently, a wanted metric whose needs the inputs cannot meet (no labels, no logits, ...).
The metrics run in the order they were registered (the rows come out in that order). Needs:

- ``reference_features``: the reference images' features (not given by a statistics file alone);
- ``spatial``: the samples' spatial features and the reference's spatial statistics (sFID);
- ``logits``: the extractor's logits of the samples;
- ``dataset_classes``: logits over the evaluated data set's classes (the domain classifier);
- ``reference_labels``: the reference is an image set with labels;
- ``sample_labels``: the samples carry their intended labels (class-conditional sets).

The reference's statistics (``mu``/``sigma``) are always there (FID needs nothing more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence

import numpy as np

from .class_metrics import ard, class_histogram, kld, per_class_accuracy
from .features import FeatureExtractor
from .frechet import FeatureStats, frechet_distance_full
from .inception_score import inception_score
from .precision_recall import precision_recall
from .reference import ImageSet

NEEDS = ("reference_features", "spatial", "logits", "dataset_classes", "reference_labels", "sample_labels")


@dataclass
class MetricRow:
    name: str
    value: float
    protocol: str  # the full protocol: extractor, sample count, reference, metric details
    detail: str = ""  # the metric-specific part of it (for tables that state the rest once)


@dataclass
class MetricInputs:
    """What one evaluation gives its metrics; ``base`` is the protocol common to every row."""

    extractor: FeatureExtractor
    samples: ImageSet
    reference: Any  # an ImageSet, or a statistics dict
    feats: Dict[str, np.ndarray]  # the samples' features
    ref_stats: Dict[str, Any]  # mu, sigma (and mu_s, sigma_s where spatial)
    ref_feats: Optional[Dict[str, np.ndarray]]  # the reference's features, where extracted or given
    base: str
    k: int = 3
    is_split: int = 5000
    shared: Dict[str, Any] = field(default_factory=dict)  # computations that several metrics share

    @property
    def n(self) -> int:
        return len(self.samples)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this evaluation (precision and recall share
        one k-NN pass)."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def has(self, need: str) -> bool:
        """Whether the inputs meet ``need`` (one of ``NEEDS``)."""
        classes = getattr(self.extractor, "predicts_dataset_classes", False) and "logits" in self.feats
        return {
            "reference_features": self.ref_feats is not None,
            "spatial": "spatial" in self.feats and "mu_s" in self.ref_stats,
            "logits": "logits" in self.feats,
            "dataset_classes": classes,
            "reference_labels": isinstance(self.reference, ImageSet) and self.reference.labels is not None,
            "sample_labels": self.samples.labels is not None,
        }[need]


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[MetricInputs], List[MetricRow]]
    needs: FrozenSet[str]


METRICS: Dict[str, Metric] = {}


def register_metric(name: str, needs: Sequence[str] = ()):
    """Register ``fn(inputs) -> [MetricRow, ...]`` as metric ``name``, computed when ``needs`` are met."""
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"metric {name!r}: unknown need(s) {bad}; valid: {', '.join(NEEDS)}")

    def wrap(fn):
        METRICS[name] = Metric(name, fn, frozenset(needs))
        return fn

    return wrap


def stats_of(feats: np.ndarray) -> Dict[str, np.ndarray]:
    """Float64 mean and covariance of a feature matrix."""
    s = FeatureStats().update(feats)
    return {"mu": s.mu, "sigma": s.sigma}


@register_metric("fid")
def fid(x: MetricInputs) -> List[MetricRow]:
    s = stats_of(x.feats["pool"])
    r = frechet_distance_full(s["mu"], s["sigma"], x.ref_stats["mu"], x.ref_stats["sigma"])
    note = "float64 statistics" + ("; eps added to the covariance diagonals" if r.offset_added else "")
    if r.singular:
        note += f"; singular S1*S2 (rank-deficient features), eigen-decomposition agrees to {r.eigh_gap:.2g}"
    return [MetricRow("fid", r.value, f"FID, {x.base}, {note}", note)]


@register_metric("sfid", needs=("spatial",))
def sfid(x: MetricInputs) -> List[MetricRow]:
    s = stats_of(x.feats["spatial"])
    r = frechet_distance_full(s["mu"], s["sigma"], x.ref_stats["mu_s"], x.ref_stats["sigma_s"])
    return [MetricRow("sfid", r.value, f"sFID (spatial features), {x.base}", "spatial features, float64")]


@register_metric("is", needs=("logits",))
def inception_score_metric(x: MetricInputs) -> List[MetricRow]:
    mean, std = inception_score(x.feats["logits"], x.is_split)
    detail = f"over the extractor's {x.extractor.num_classes} classes, splits of {x.is_split} (std {std:.4f})"
    return [MetricRow("is", mean, f"IS, {x.base}, {detail}", detail)]


def _precision_recall(x: MetricInputs):
    """(precision, recall, detail): one k-NN pass for both metrics."""
    p, r = x.once("precision_recall", lambda: precision_recall(x.ref_feats["pool"], x.feats["pool"], k=x.k))
    return p, r, f"k={x.k} manifolds ({len(x.ref_feats['pool'])} reference vectors)"


@register_metric("precision", needs=("reference_features",))
def precision(x: MetricInputs) -> List[MetricRow]:
    p, _, detail = _precision_recall(x)
    return [MetricRow("precision", p, f"precision, {x.base}, {detail}", detail)]


@register_metric("recall", needs=("reference_features",))
def recall(x: MetricInputs) -> List[MetricRow]:
    _, r, detail = _precision_recall(x)
    return [MetricRow("recall", r, f"recall, {x.base}, {detail}", detail)]


def _histograms(x: MetricInputs):
    """(true, predicted) class histograms and the protocol of KLD / ARD."""
    c = x.extractor.num_classes
    t, p = class_histogram(x.reference.labels, c), class_histogram(x.feats["logits"].argmax(1), c)
    proto = (f"predicted-class histogram of {x.n} samples by {x.extractor.name} vs the label histogram "
             f"of {x.reference.description}")
    return t, p, proto


@register_metric("kld", needs=("dataset_classes", "reference_labels"))
def kld_metric(x: MetricInputs) -> List[MetricRow]:
    t, p, proto = _histograms(x)
    d = "KL(true || pred), 1e-8 on both"
    return [MetricRow("kld", kld(t, p), f"{d}; {proto}", d + "; predicted vs reference classes")]


@register_metric("ard", needs=("dataset_classes", "reference_labels"))
def ard_metric(x: MetricInputs) -> List[MetricRow]:
    t, p, proto = _histograms(x)
    d = "0.5 * sum |true - pred|"
    return [MetricRow("ard", ard(t, p), f"{d}; {proto}", d + "; predicted vs reference classes")]


@register_metric("class_acc", needs=("dataset_classes", "sample_labels"))
def class_acc(x: MetricInputs) -> List[MetricRow]:
    """The mean per-class accuracy, then a row per class (``acc_class_{c}``)."""
    acc = per_class_accuracy(x.feats["logits"].argmax(1), x.samples.labels)
    proto = f"{x.extractor.name} predictions of the intended class, {x.n} class-conditional samples"
    rows = [MetricRow("class_acc", float(np.mean(list(acc.values()))), f"mean per-class accuracy, {proto}",
                      "mean over classes: predicted == intended class")]
    rows += [MetricRow(f"acc_class_{cls}", a, proto, f"samples of class {cls} predicted as {cls}")
             for cls, a in acc.items()]
    return rows


ALL_METRICS = tuple(METRICS)  # the built-in metrics, in their order

__all__ = ["NEEDS", "MetricRow", "MetricInputs", "Metric", "METRICS", "register_metric", "stats_of", "ALL_METRICS"]
