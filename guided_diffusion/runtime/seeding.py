"""Seeds: one mixing rule for (seed, step, rank) and one way to seed Python, NumPy and torch.

Every stream of a run derives from ``cfg.seed`` through ``step_seed``: the training step's noise and
data order (``TrainLoop``), a sample set's batches (``sampling.sample_sets``), a task's data loader
and replay draws (``continual``), the DKDM cache. A stream therefore depends on (seed, step, rank)
alone, which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for (seed, step, rank), well mixed so that neighbouring steps differ."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)


def _seed_libraries(s: int) -> None:
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)  # also seeds every CUDA device


def seed_all(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) for ``rank``; returns the seed used.

    Rank 0 uses ``seed`` itself (a one-process run equals ``torch.manual_seed(seed)``); other ranks get
    a seed mixed from (seed, rank), so streams differ between ranks and do not collide across seeds.
    """
    if rank == 0:
        s = int(seed) % 2**32
    else:
        s = int(np.random.SeedSequence([int(seed) % 2**32, int(rank)]).generate_state(1)[0])
    _seed_libraries(s)
    return s


def seed_everything_for_step(seed: int, step: int, rank: int) -> torch.Generator:
    """Seed Python, NumPy and torch with ``step_seed(seed, step, rank)``; returns a CPU generator
    seeded the same (the step's own draws)."""
    s = step_seed(seed, step, rank)
    _seed_libraries(s)
    return torch.Generator().manual_seed(s)
