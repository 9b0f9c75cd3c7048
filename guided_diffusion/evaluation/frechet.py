"""Feature statistics in float64 and the Fréchet distance between two Gaussians (FID, sFID).

``FeatureStats`` accumulates a mean and covariance in float64, batch by batch, around a fixed
shift (the first batch's mean) so that large feature offsets do not cancel. The covariance is the
unbiased one (``np.cov``'s ddof=1), as ADM's evaluator and pytorch-fid compute it.

``frechet_distance`` is ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). With ``method="sqrtm"``
(the default) it follows ADM / pytorch-fid: ``scipy.linalg.sqrtm(S1 @ S2)``; if that is not finite,
``eps`` is added to both diagonals and it is retried; an imaginary part whose diagonal exceeds 1e-3
is an error, a smaller one is dropped. ``method="eigh"`` computes Tr((S1^(1/2) S2 S1^(1/2))^(1/2))
from symmetric eigen-decompositions (same value; robust for singular covariances).

Dimensions whose variance is (numerically) zero in *both* sets -- dead ReLU units of a small
feature network -- are taken out of the matrix square root: their whole covariance row and column
is zero, so they add exactly (mu1_i - mu2_i)^2, and keeping them would only make S1 S2 singular.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np


class FeatureStats:
    """Running float64 mean and (unbiased) covariance of feature vectors."""

    def __init__(self, dim: Optional[int] = None):
        self.dim = dim
        self.n = 0
        self._shift: Optional[np.ndarray] = None
        self._sum: Optional[np.ndarray] = None
        self._outer: Optional[np.ndarray] = None

    def update(self, features) -> "FeatureStats":
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        if x.shape[0] == 0:
            return self
        if self._shift is None:
            if self.dim is not None and x.shape[1] != self.dim:
                raise ValueError(f"features have {x.shape[1]} dims, expected {self.dim}")
            self.dim = x.shape[1]
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim, np.float64)
            self._outer = np.zeros((self.dim, self.dim), np.float64)
        elif x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dims, expected {self.dim}")
        d = x - self._shift
        self._sum += d.sum(axis=0)
        self._outer += d.T @ d
        self.n += x.shape[0]
        return self

    @property
    def mu(self) -> np.ndarray:
        self._need(1)
        return self._shift + self._sum / self.n

    @property
    def sigma(self) -> np.ndarray:
        self._need(2)
        mean_d = self._sum / self.n
        return (self._outer - self.n * np.outer(mean_d, mean_d)) / (self.n - 1)

    def _need(self, n: int) -> None:
        if self.n < n:
            raise ValueError(f"feature statistics need at least {n} vectors, got {self.n}")


def feature_statistics(features) -> tuple:
    """(mu, sigma) of an (N, D) array in float64: ``np.mean`` and ``np.cov(rowvar=False)``."""
    stats = FeatureStats().update(features)
    return stats.mu, stats.sigma


@dataclass
class FrechetResult:
    value: float
    offset_added: bool = False  # eps was added to the diagonals (sqrtm was not finite)
    max_imag: float = 0.0  # the largest imaginary part dropped from sqrtm
    singular: bool = False  # scipy found S1 S2 singular; ``eigh_gap`` says how far the eigh value is
    eigh_gap: float = 0.0  # |value - the eigen-decomposition's value| (computed only when singular)


def _sqrtm_trace(s1: np.ndarray, s2: np.ndarray, eps: float):
    from scipy import linalg

    offset_added = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if not np.isfinite(covmean).all():
        warnings.warn(f"Fréchet distance: singular product; adding {eps} to the diagonal of both covariances")
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        offset_added = True
    max_imag = 0.0
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(covmean.imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {max_imag} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(np.trace(covmean)), offset_added, max_imag, singular


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _eigh_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance_full(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> FrechetResult:
    """The Fréchet distance with diagnostics (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"covariances {s1.shape} / {s2.shape} do not fit means of size {mu1.size}")
    diff = mu1 - mu2
    d1, d2 = np.diagonal(s1), np.diagonal(s2)
    scale = max(float(np.max(np.abs(d1), initial=0.0)), float(np.max(np.abs(d2), initial=0.0)))
    live = (d1 > 1e-12 * scale) | (d2 > 1e-12 * scale)
    if scale > 0 and not live.all():
        s1, s2 = s1[np.ix_(live, live)], s2[np.ix_(live, live)]
    if scale == 0:
        return FrechetResult(float(diff @ diff))
    singular, gap = False, 0.0
    if method == "sqrtm":
        tr_covmean, offset_added, max_imag, singular = _sqrtm_trace(s1, s2, eps)
        if singular:  # rank-deficient features: say how far the robust computation is
            gap = 2.0 * abs(tr_covmean - _eigh_trace(s1, s2))
    elif method == "eigh":
        tr_covmean, offset_added, max_imag = _eigh_trace(s1, s2), False, 0.0
    else:
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return FrechetResult(value, offset_added, max_imag, singular, gap)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64."""
    return frechet_distance_full(mu1, sigma1, mu2, sigma2, eps, method).value


def fid_from_features(features_1, features_2, **kw) -> float:
    """FID between two (N, D) feature arrays (statistics in float64)."""
    mu1, s1 = feature_statistics(features_1)
    mu2, s2 = feature_statistics(features_2)
    return frechet_distance(mu1, s1, mu2, s2, **kw)
