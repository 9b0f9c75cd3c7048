"""Figures over seeds and the rule that judges a claim against their spread.

One implementation for every report that repeats runs over seeds (the fidelity benchmark's claims,
``scripts/tools/bench/claims.py``; the DKDM ablation, ``guided_diffusion/dkdm/ablation.py``):
mean ± sample std cells, ``compare``, which says whether one side beats the other by more than
the spread (``RULE``), and ``within_tolerance``, whether one side is no worse than the other by more
than a tolerance or the spread (a claim of equivalence).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# The verdict rule. With n >= 2 seeds per side, a difference "exceeds the spread" when the means differ
# by more than the sum of the two sample standard deviations (mean +- 1 std intervals do not overlap).
# Then the claim is confirmed (right direction) or not confirmed (wrong direction); otherwise, and
# always with a single seed, it is not resolved.
RULE = ("a claim is *confirmed* when the difference of the means over seeds is in the claimed direction and "
        "larger than the sum of the two standard deviations over seeds (the mean ± std intervals do not overlap), "
        "*not confirmed* when it is that large in the other direction, *not resolved* otherwise (and always with "
        "fewer than two seeds a side)")


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that exist (None when none does)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def std(vals: Sequence[float]) -> float:
    """The sample std over seeds; 0 where the seeds agree (float round-off is not a spread)."""
    sd = float(np.std(vals, ddof=1))
    return 0.0 if sd <= 1e-9 * max(1.0, float(np.max(np.abs(vals)))) else sd


def cell(values: Sequence[Optional[float]], digits: int = 3) -> str:
    """A table cell: ``mean ± std`` over the seeds that have a value, the value alone for one seed."""
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}g}"
    return f"{np.mean(vals):.{digits}g} ± {std(vals):.2g}"


def mean_std(vals: Sequence[float]) -> str:
    """Prose: ``mean ± std``, or the value with ``(1 seed)``, or ``n/a``."""
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4g} (1 seed)"
    return f"{np.mean(vals):.4g} ± {std(vals):.2g}"


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> Optional[str]:
    """'better' / 'worse' when ``a`` beats / loses to ``b`` by more than the spread, 'tie' when the
    difference is within it, None when a side has fewer than two seeds (see ``RULE``)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = float(np.mean(a) - np.mean(b)) * (1.0 if higher_is_better else -1.0)
    spread = float(np.std(a, ddof=1) + np.std(b, ddof=1))
    if diff > spread:
        return "better"
    if -diff > spread:
        return "worse"
    return "tie"


def all_better(outcomes: Sequence[Optional[str]]) -> str:
    """A claim that needs every comparison to go the claimed way: 'confirmed', 'not confirmed' (one
    went the other way by more than the spread) or 'not resolved'."""
    if any(o == "worse" for o in outcomes):
        return "not confirmed"
    if outcomes and all(o == "better" for o in outcomes):
        return "confirmed"
    return "not resolved"


def within_tolerance(a: Sequence[float], b: Sequence[float], tolerance: float, higher_is_better: bool) -> Optional[bool]:
    """Whether ``a`` is no worse than ``b`` by more than ``tolerance`` x |mean of b| or the spread (as in
    ``compare``), whichever is larger; None when a side has fewer than two seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    excess = float(np.mean(b) - np.mean(a)) if higher_is_better else float(np.mean(a) - np.mean(b))
    spread = float(np.std(a, ddof=1) + np.std(b, ddof=1))
    return excess <= max(tolerance * abs(float(np.mean(b))), spread)


__all__ = ["RULE", "mean", "std", "cell", "mean_std", "compare", "all_better", "within_tolerance"]
