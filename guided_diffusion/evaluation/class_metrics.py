"""Class-distribution metrics of generated samples and continual-learning accuracy summaries.

KLD and ARD follow Masip et al. (generative distillation, arXiv 2311.14028): a classifier labels
the generated samples; ``ratio_pred`` is the histogram of its predictions, ``ratio_true`` the label
histogram of the test data of the classes seen so far (both over *all* classes, normalised to 1).

    ARD = 0.5 * sum_c |ratio_true_c - ratio_pred_c|              (total variation)
    KLD = sum_c (t_c + 1e-8) * (log(t_c + 1e-8) - log(p_c + 1e-8))  (KL(true || pred), 1e-8 on both)

The accuracy matrix ``R[i, j]`` is the accuracy on task j after training task i (i >= j filled).
Average accuracy is the mean of the last row; forgetting of task j is the best earlier accuracy on
j minus the final one, averaged over all tasks but the last (Chaudhry et al. 2018).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

KLD_EPS = 1e-8


def class_histogram(labels, num_classes: int) -> np.ndarray:
    """Normalised histogram (sums to 1) of integer labels over ``num_classes`` classes."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("class_histogram of an empty label set")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels outside [0, {num_classes})")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return counts / counts.sum()


def kld(ratio_true, ratio_pred, eps: float = KLD_EPS) -> float:
    """KL(true || pred) with ``eps`` added to both histograms (Masip's handling of empty classes)."""
    t = np.asarray(ratio_true, np.float64) + eps
    p = np.asarray(ratio_pred, np.float64) + eps
    if t.shape != p.shape:
        raise ValueError(f"histograms differ in shape: {t.shape} vs {p.shape}")
    return float(np.sum(t * (np.log(t) - np.log(p))))


def ard(ratio_true, ratio_pred) -> float:
    """Absolute ratio difference: 0.5 * sum |true - pred| (the total variation distance)."""
    t = np.asarray(ratio_true, np.float64)
    p = np.asarray(ratio_pred, np.float64)
    if t.shape != p.shape:
        raise ValueError(f"histograms differ in shape: {t.shape} vs {p.shape}")
    return float(0.5 * np.abs(t - p).sum())


def per_class_accuracy(pred, target, classes: Optional[Sequence[int]] = None) -> Dict[int, float]:
    """{class: fraction of samples of that (intended) class that are predicted as it}."""
    pred = np.asarray(pred, np.int64).reshape(-1)
    target = np.asarray(target, np.int64).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"{pred.size} predictions for {target.size} targets")
    classes = sorted(set(target.tolist())) if classes is None else [int(c) for c in classes]
    out = {}
    for c in classes:
        mask = target == c
        out[c] = float((pred[mask] == c).mean()) if mask.any() else float("nan")
    return out


def _matrix(acc) -> np.ndarray:
    r = np.asarray(acc, np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"the accuracy matrix must be square (tasks x tasks), got shape {r.shape}")
    return r


def average_accuracy(acc, after_task: int = -1) -> float:
    """Mean accuracy over tasks 0..i after training task i (``after_task``; default the last)."""
    r = _matrix(acc)
    i = after_task % r.shape[0]
    return float(np.mean(r[i, : i + 1]))


def forgetting(acc, after_task: int = -1) -> float:
    """Mean over tasks j < i of max_{l < i} R[l, j] - R[i, j] (0 when i = 0)."""
    r = _matrix(acc)
    i = after_task % r.shape[0]
    if i == 0:
        return 0.0
    drops = [np.max(r[j:i, j]) - r[i, j] for j in range(i)]
    return float(np.mean(drops))


def average_incremental(acc) -> float:
    """Mean over tasks i of the mean quality over tasks 0..i after task i: the average incremental
    accuracy (Rebuffi et al. 2017), CLoG's average incremental quality (AIQ, Zhang et al. 2024)."""
    r = _matrix(acc)
    return float(np.mean([np.mean(r[i, : i + 1]) for i in range(r.shape[0])]))


def clog_metrics(quality, higher_is_better: bool = True) -> Dict[str, float]:
    """CLoG's three numbers from a quality matrix Q (row i: after task i; column j: task j's classes):
    AIQ (``average_incremental``), AFQ (mean of the last row: average final quality) and FR (forgetting
    rate: mean over j < T-1 of how much task j's quality fell from its best before the last task to
    its last value; positive = forgotten). ``higher_is_better=False`` for FID-like qualities."""
    q = _matrix(quality)
    sign = 1.0 if higher_is_better else -1.0
    return {"aiq": average_incremental(q), "afq": float(np.mean(q[-1])),
            "fr": forgetting(sign * q) if q.shape[0] > 1 else 0.0}


def accuracy_matrix(rows: Sequence[Dict[int, float]], num_tasks: Optional[int] = None) -> np.ndarray:
    """Square matrix from per-row {task: accuracy} dicts (row i = after task i); NaN where unknown."""
    n = num_tasks or len(rows)
    r = np.full((n, n), np.nan)
    for i, row in enumerate(rows[:n]):
        for j, v in row.items():
            if 0 <= int(j) < n:
                r[i, int(j)] = v
    return r
