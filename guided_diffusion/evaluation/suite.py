"""Evaluate a set of images against a reference: every metric with its protocol beside it.

``evaluate_sets(extractor, samples, reference)`` extracts features (sharded over ranks) and returns
``MetricRow``s: name, value and a protocol string (feature extractor, sample count, reference). The
metrics it can compute depend on what is given:

- ``fid`` (pool features, float64 statistics), ``sfid`` (spatial features, Inception only);
- ``is`` (Inception Score from the extractor's logits; for the domain classifier over its classes);
- ``precision`` / ``recall`` (k = 3 manifolds; need the reference images, not only statistics);
- ``kld`` / ``ard`` (the extractor must predict the data set's classes, i.e. the domain
  classifier, and the reference must carry labels);
- ``class_acc`` and ``acc_class_{c}`` (the samples carry intended labels: class-conditional sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .class_metrics import ard, class_histogram, kld, per_class_accuracy
from .features import FeatureExtractor, extract_features
from .frechet import FeatureStats, frechet_distance_full
from .inception_score import inception_score
from .precision_recall import precision_recall
from .reference import ImageSet, cached_reference_stats, save_reference_stats

ALL_METRICS = ("fid", "sfid", "is", "precision", "recall", "kld", "ard", "class_acc")


@dataclass
class MetricRow:
    name: str
    value: float
    protocol: str  # the full protocol: extractor, sample count, reference, metric details
    detail: str = ""  # the metric-specific part of it (for tables that state the rest once)


def _stats(feats: np.ndarray) -> Dict[str, np.ndarray]:
    s = FeatureStats().update(feats)
    return {"mu": s.mu, "sigma": s.sigma}


def _check_extractor(stats: Dict, extractor: FeatureExtractor) -> None:
    if stats.get("extractor") and stats["extractor"] != extractor.name:
        raise ValueError(f"the reference statistics were computed with {stats['extractor']!r}, not {extractor.name!r}")


def evaluate_sets(
    extractor: FeatureExtractor,
    samples: ImageSet,
    reference: Union[ImageSet, Dict],
    metrics: Sequence[str] = ALL_METRICS,
    *,
    batch_size: int = 250,
    device=None,
    k: int = 3,
    is_split: int = 5000,
    ref_cache: str = "",
    progress=None,
    reference_features: Optional[Dict[str, np.ndarray]] = None,
    sample_features: Optional[Dict[str, np.ndarray]] = None,
    reference_stats: Optional[Dict] = None,
) -> List[MetricRow]:
    """Metrics of ``samples`` against ``reference`` (an ``ImageSet``, or a statistics dict as
    ``load_reference_stats`` returns). Metrics that the inputs cannot give are skipped silently
    unless asked for alone; unknown names raise. ``ref_cache``: an ``.npz`` to reuse/write the
    reference statistics. ``reference_features`` / ``sample_features``: precomputed features of the
    reference images / of the samples (``extract_features`` with this extractor). ``reference_stats``:
    statistics stored beside the reference images (ADM's reference batches carry ``mu``/``sigma``
    of the Inception pool features): FID and sFID use them, the other metrics the images, as ADM's
    evaluator does."""
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(ALL_METRICS)}")
    want = set(metrics)
    rows: List[MetricRow] = []
    feats = sample_features if sample_features is not None else extract_features(
        extractor, samples.images, batch_size, device, progress)
    n = len(samples)
    ref_is_images = isinstance(reference, ImageSet)
    ref_desc = reference.description if ref_is_images else f"statistics of {reference.get('source') or 'a reference'}"
    base = f"{extractor.describe()}; {n} samples ({samples.description}) vs {ref_desc}"

    # Reference features / statistics.
    ref_feats, ref_stats = reference_features, None
    if ref_is_images and reference_stats is not None:
        _check_extractor(reference_stats, extractor)
        ref_stats = reference_stats
        base += " (FID: its stored statistics)"
        if ref_feats is None and want & {"precision", "recall", "kld", "ard"}:
            ref_feats = extract_features(extractor, reference.images, batch_size, device, progress)
    elif ref_is_images:
        sha = reference.sha256()
        ref_stats = cached_reference_stats(ref_cache, extractor.name, sha)
        need_feats = bool(want & {"precision", "recall", "kld", "ard"}) or ref_stats is None
        if ref_feats is None and need_feats:
            ref_feats = extract_features(extractor, reference.images, batch_size, device, progress)
        if ref_stats is None:
            ref_stats = _stats(ref_feats["pool"])
            if "spatial" in ref_feats:
                s = _stats(ref_feats["spatial"])
                ref_stats.update(mu_s=s["mu"], sigma_s=s["sigma"])
            if ref_cache:
                from .. import dist_util

                if dist_util.is_main():
                    save_reference_stats(ref_cache, ref_stats, n=len(reference), extractor=extractor.name,
                                         source=reference.description, source_sha256=sha)
    else:
        ref_stats = reference
        _check_extractor(reference, extractor)

    if "fid" in want:
        s = _stats(feats["pool"])
        r = frechet_distance_full(s["mu"], s["sigma"], ref_stats["mu"], ref_stats["sigma"])
        note = "float64 statistics" + ("; eps added to the covariance diagonals" if r.offset_added else "")
        if r.singular:
            note += f"; singular S1*S2 (rank-deficient features), eigen-decomposition agrees to {r.eigh_gap:.2g}"
        rows.append(MetricRow("fid", r.value, f"FID, {base}, {note}", note))
    if "sfid" in want and "spatial" in feats and "mu_s" in ref_stats:
        s = _stats(feats["spatial"])
        r = frechet_distance_full(s["mu"], s["sigma"], ref_stats["mu_s"], ref_stats["sigma_s"])
        rows.append(MetricRow("sfid", r.value, f"sFID (spatial features), {base}", "spatial features, float64"))
    if "is" in want and "logits" in feats:
        mean, std = inception_score(feats["logits"], is_split)
        detail = f"over the extractor's {extractor.num_classes} classes, splits of {is_split} (std {std:.4f})"
        rows.append(MetricRow("is", mean, f"IS, {base}, {detail}", detail))
    if want & {"precision", "recall"} and ref_feats is not None:
        p, rc = precision_recall(ref_feats["pool"], feats["pool"], k=k)
        detail = f"k={k} manifolds ({len(ref_feats['pool'])} reference vectors)"
        if "precision" in want:
            rows.append(MetricRow("precision", p, f"precision, {base}, {detail}", detail))
        if "recall" in want:
            rows.append(MetricRow("recall", rc, f"recall, {base}, {detail}", detail))
    classes_known = getattr(extractor, "predicts_dataset_classes", False) and "logits" in feats
    if classes_known:
        pred = feats["logits"].argmax(1)
        c = extractor.num_classes
        if want & {"kld", "ard"} and ref_is_images and reference.labels is not None:
            t, p = class_histogram(reference.labels, c), class_histogram(pred, c)
            proto = (f"predicted-class histogram of {n} samples by {extractor.name} vs the label histogram "
                     f"of {reference.description}")
            d_kld, d_ard = "KL(true || pred), 1e-8 on both", "0.5 * sum |true - pred|"
            if "kld" in want:
                rows.append(MetricRow("kld", kld(t, p), f"{d_kld}; {proto}", d_kld + "; predicted vs reference classes"))
            if "ard" in want:
                rows.append(MetricRow("ard", ard(t, p), f"{d_ard}; {proto}", d_ard + "; predicted vs reference classes"))
        if "class_acc" in want and samples.labels is not None:
            acc = per_class_accuracy(pred, samples.labels)
            proto = f"{extractor.name} predictions of the intended class, {n} class-conditional samples"
            rows.append(MetricRow("class_acc", float(np.mean(list(acc.values()))), f"mean per-class accuracy, {proto}",
                                  "mean over classes: predicted == intended class"))
            for cls, a in acc.items():
                rows.append(MetricRow(f"acc_class_{cls}", a, proto, f"samples of class {cls} predicted as {cls}"))
    return rows


def format_table(rows: List[MetricRow], full: bool = False) -> str:
    """A plain-text table: metric, value, protocol (``full``) or its metric-specific part."""
    if not rows:
        return "(no metric could be computed from these inputs)"
    w = max(len(r.name) for r in rows + [MetricRow("metric", 0, "")])
    lines = [f"{'metric':<{w}}  {'value':>12}  protocol", f"{'-' * w}  {'-' * 12}  {'-' * 8}"]
    for r in rows:
        lines.append(f"{r.name:<{w}}  {r.value:>12.6g}  {r.protocol if full or not r.detail else r.detail}")
    return "\n".join(lines)
