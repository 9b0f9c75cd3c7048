"""Evaluate a set of images against a reference: every metric with its protocol beside it.

``evaluate_sets(extractor, samples, reference)`` extracts features (sharded over ranks) and returns
``MetricRow``s: name, value and a protocol string (feature extractor, sample count, reference). The
metrics are a registry (``metrics.register_metric``: one function each, with the inputs it needs);
which of them it can compute depends on what is given:

- ``fid`` (pool features, float64 statistics), ``sfid`` (spatial features, Inception only);
- ``is`` (Inception Score from the extractor's logits; for the domain classifier over its classes);
- ``precision`` / ``recall`` (k = 3 manifolds; need the reference images, not only statistics);
- ``kld`` / ``ard`` (the extractor must predict the data set's classes, i.e. the domain
  classifier, and the reference must carry labels);
- ``class_acc`` and ``acc_class_{c}`` (the samples carry intended labels: class-conditional sets).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .features import FeatureExtractor, extract_features
from .metrics import ALL_METRICS, METRICS, MetricInputs, MetricRow, stats_of
from .reference import ImageSet, cached_reference_stats, save_reference_stats


def _check_extractor(stats: Dict, extractor: FeatureExtractor) -> None:
    if stats.get("extractor") and stats["extractor"] != extractor.name:
        raise ValueError(f"the reference statistics were computed with {stats['extractor']!r}, not {extractor.name!r}")


def evaluate_sets(
    extractor: FeatureExtractor,
    samples: ImageSet,
    reference: Union[ImageSet, Dict],
    metrics: Optional[Sequence[str]] = None,
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
    ``load_reference_stats`` returns). ``metrics``: names of registered metrics (default: all),
    computed in the registry's order; those whose needs the inputs cannot meet are skipped silently;
    unknown names raise. ``ref_cache``: an ``.npz`` to reuse/write the
    reference statistics. ``reference_features`` / ``sample_features``: precomputed features of the
    reference images / of the samples (``extract_features`` with this extractor). ``reference_stats``:
    statistics stored beside the reference images (ADM's reference batches carry ``mu``/``sigma``
    of the Inception pool features): FID and sFID use them, the other metrics the images, as ADM's
    evaluator does."""
    metrics = list(METRICS) if metrics is None else metrics
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}")
    want = [METRICS[m] for m in METRICS if m in set(metrics)]
    need_ref_feats = any("reference_features" in m.needs for m in want)
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
        if ref_feats is None and need_ref_feats:
            ref_feats = extract_features(extractor, reference.images, batch_size, device, progress)
    elif ref_is_images:
        sha = reference.sha256()
        ref_stats = cached_reference_stats(ref_cache, extractor.name, sha)
        if ref_feats is None and (need_ref_feats or ref_stats is None):
            ref_feats = extract_features(extractor, reference.images, batch_size, device, progress)
        if ref_stats is None:
            ref_stats = stats_of(ref_feats["pool"])
            if "spatial" in ref_feats:
                s = stats_of(ref_feats["spatial"])
                ref_stats.update(mu_s=s["mu"], sigma_s=s["sigma"])
            if ref_cache:
                from ..runtime import dist_util

                if dist_util.is_main():
                    save_reference_stats(ref_cache, ref_stats, n=len(reference), extractor=extractor.name,
                                         source=reference.description, source_sha256=sha)
    else:
        ref_stats = reference
        _check_extractor(reference, extractor)

    inputs = MetricInputs(extractor, samples, reference, feats, ref_stats, ref_feats, base, k=k, is_split=is_split)
    rows: List[MetricRow] = []
    for metric in want:
        if all(inputs.has(need) for need in metric.needs):
            rows += metric.compute(inputs)
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


__all__ = ["ALL_METRICS", "MetricRow", "evaluate_sets", "format_table"]
