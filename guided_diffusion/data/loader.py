"""An infinite, resumable, world-size-invariant batch iterator over in-memory tensors.

The data are an endless stream: the concatenation of epoch permutations ``perm_0, perm_1, ...``,
with ``perm_e = randperm(N, Generator(mix(seed, e)))``. The global batch of step ``s`` is stream
positions ``[s*B, (s+1)*B)``: no sample is dropped, an epoch's remainder continues into the next
batch (which then also holds the next epoch's first samples), and N < B works. Rank ``r`` of
``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of each global batch, so the union over
ranks is the same global batch for every world size. Horizontal flips are drawn per position of
the global batch from ``Generator(mix(seed, s))``, hence also world-size invariant.

The position is just the step: ``state_dict() == {"step": s, ...}``; loading it resumes
bit-for-bit, with any world size.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]


def _mix(*parts: int) -> int:
    """A 63-bit seed hashed from non-negative ints (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def concat_data(*pairs: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``(x, y)`` pairs (e.g. replayed and real data); ``y=None`` counts as zeros."""
    if not pairs:
        raise ValueError("concat_data needs at least one (x, y) pair")
    xs, ys = [], []
    for x, y in pairs:
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise ValueError(f"cannot concatenate images of shape {tuple(x.shape[1:])} and {tuple(xs[0].shape[1:])}")
        xs.append(x)
        ys.append(torch.zeros(x.shape[0], dtype=torch.long) if y is None else torch.as_tensor(y).long().reshape(-1))
        if ys[-1].shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {ys[-1].shape[0]} labels")
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return torch.cat([x.to(dtype) for x in xs]), torch.cat(ys)


class InfiniteLoader:
    """Yields ``(x, y)`` for this rank forever: x (B/W, C, H, W) as stored, y (B/W,) int64.

    images/labels: tensors, or lists of tensors that are concatenated (see ``concat_data``);
    labels None means all zeros. global_batch_size B is the batch over all ranks and must be a
    multiple of world_size W. seed >= 0 fixes the order; random_flip mirrors about half of the
    samples horizontally.
    """

    def __init__(
        self,
        images: TensorOrList,
        labels: Optional[TensorOrList],
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        random_flip: bool = False,
    ):
        if isinstance(images, (list, tuple)):
            if labels is not None and not isinstance(labels, (list, tuple)):
                raise ValueError("with a list of image tensors, give a list of label tensors (or None)")
            labs = labels if labels is not None else [None] * len(images)
            if len(labs) != len(images):
                raise ValueError(f"{len(images)} image tensors but {len(labs)} label tensors")
            images, labels = concat_data(*zip(images, labs))
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be an (N,C,H,W) tensor, got {getattr(images, 'shape', type(images))}")
        n = images.shape[0]
        labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"{n} images but {labels.shape[0]} labels")
        if n == 0:
            raise ValueError("InfiniteLoader: the data set is empty")
        if global_batch_size < 1 or world_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a positive multiple of world_size ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.images, self.labels = images, labels
        self.global_batch_size, self.rank, self.world_size = int(global_batch_size), int(rank), int(world_size)
        self.local_batch_size = self.global_batch_size // self.world_size
        self.seed, self.random_flip = int(seed), bool(random_flip)
        self.step = 0
        self._perms: Dict[int, torch.Tensor] = {}

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    @property
    def epoch(self) -> float:
        """Passes over the data so far (global samples drawn / N)."""
        return self.step * self.global_batch_size / self.num_samples

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_mix(self.seed, 0, epoch))
            self._perms[epoch] = torch.randperm(self.num_samples, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, rank: Optional[int] = None) -> torch.Tensor:
        """Sample indices of ``rank``'s slice (default: this rank) of the global batch of ``step``."""
        rank = self.rank if rank is None else rank
        b, n = self.local_batch_size, self.num_samples
        pos = step * self.global_batch_size + rank * b + torch.arange(b, dtype=torch.long)
        epochs, offsets = pos // n, pos % n
        out = torch.empty(b, dtype=torch.long)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self._perm(e)[offsets[m]]
        return out

    def flips(self, step: int, rank: Optional[int] = None) -> torch.Tensor:
        """Bool (B/W,): which samples of the slice are mirrored (drawn for the global batch)."""
        rank = self.rank if rank is None else rank
        g = torch.Generator().manual_seed(_mix(self.seed, 1, step))
        u = torch.rand(self.global_batch_size, generator=g)
        b = self.local_batch_size
        return u[rank * b : (rank + 1) * b] < 0.5

    def batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(x, y)`` at ``step`` (pure: does not move the position)."""
        idx = self.indices(step)
        x, y = self.images[idx], self.labels[idx]
        if self.random_flip:
            f = self.flips(step)
            if f.any():
                x[f] = x[f].flip(-1)
        return x, y

    def __iter__(self):
        return self

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state['step']``; the seed, global batch and data size must match (the world
        size may differ)."""
        for key in ("seed", "global_batch_size", "num_samples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data loader: saved {key}={state[key]}, now {getattr(self, key)}; "
                    f"the data order would differ"
                )
        self.step = int(state["step"])
