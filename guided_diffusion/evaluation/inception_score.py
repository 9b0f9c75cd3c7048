"""Inception Score from class logits, as ADM's evaluator computes it.

IS = exp(E_x KL(p(y|x) || p(y))), computed on consecutive splits of ``split_size`` samples (ADM:
5,000) and averaged. For the TF-FID Inception-v3 the logits are the *unbiased* ones (pool features
times the fc weight, no bias: the ``softmax/logits/MatMul`` tensor that ADM feeds to its softmax).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits, split_size: int = 5000) -> Tuple[float, float]:
    """(mean, std) of the Inception Score over splits of ``split_size`` rows of ``logits``."""
    p = softmax(logits)
    if p.shape[0] == 0:
        raise ValueError("inception_score needs at least one sample")
    scores = []
    for i in range(0, p.shape[0], split_size):
        part = p[i : i + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        # xlogy-style: 0 * log 0 = 0 (a softmax is never exactly 0 in float64 in practice)
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - np.log(marginal)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
