"""Improved precision and recall (Kynkäänniemi et al. 2019) with ADM's manifold estimator, k = 3.

Each set's manifold is the union of balls around its feature vectors, each ball's radius being the
distance to the k-th nearest *other* vector of the same set. Precision is the fraction of sample
vectors inside the reference manifold; recall the fraction of reference vectors inside the sample
manifold. A vector is inside when its distance to some centre is <= that centre's radius. Distances
are squared Euclidean (the comparison is the same as with plain distances), computed in blocks.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(features, k: int = 3, block: int = 4096) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row (row itself at rank 0)."""
    x = torch.as_tensor(np.asarray(features, np.float64))
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"the manifold with k={k} needs more than {k} vectors, got {n}")
    out = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, block):
        d = _sq_dists(x[i : i + block], x)
        out[i : i + block] = torch.kthvalue(d, k + 1, dim=1).values
    return out.numpy()


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    inside = torch.zeros(points.shape[0], dtype=torch.bool)
    for i in range(0, points.shape[0], block):
        d = _sq_dists(points[i : i + block], centres)
        inside[i : i + block] = (d <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(reference, samples, k: int = 3, block: int = 4096) -> Tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference`` (two (N, D) feature arrays)."""
    ref = torch.as_tensor(np.asarray(reference, np.float64))
    gen = torch.as_tensor(np.asarray(samples, np.float64))
    r_ref = torch.as_tensor(manifold_radii(ref, k, block))
    r_gen = torch.as_tensor(manifold_radii(gen, k, block))
    precision = _inside(gen, ref, r_ref, block).double().mean().item()
    recall = _inside(ref, gen, r_gen, block).double().mean().item()
    return float(precision), float(recall)
