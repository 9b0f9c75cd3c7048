"""The dynamic cache in memory: each step, B random entries take one teacher step and are written back.

Dynamic iterative distillation (Xiang et al. 2025, sec. 3.3), per rank and step:

    idx   = B entries of this rank's slice, drawn without replacement
    where t[idx] == 0 (finished): x = fresh noise, t = T (and a fresh label)   -- restart
    x_{t-1} = teacher ancestral step from (x, t - 1)                              -- one NFE each
    the student learns the teacher's eps (and step variance) on (x, t - 1)
    x[idx], t[idx] = x_{t-1}, t - 1                                               -- write back

``t`` counts the teacher steps still to apply (T: noise, 0: finished), as in the cache files.

Resume and ranks. The cache is part of the training state: ``state_dict`` returns every entry and
the training loop saves it with its checkpoints. Since only rank 0 writes checkpoints, every step
gathers the advanced entries of all ranks to rank 0, which holds the whole cache; the other ranks
hold their own slice only. A checkpoint is therefore independent of the world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from ..runtime import dist_util
from .format import CacheError, rank_slice, read_entries, read_header
from .teacher import teacher_step


@dataclass
class TeacherBatch:
    """One step of B cache entries: the student's input and the teacher's step distribution."""

    x_t: torch.Tensor
    t: torch.Tensor  # chain index the networks see (the entry's state minus one)
    y: Optional[torch.Tensor]
    eps: torch.Tensor  # the teacher's eps (what the student's eps must match)
    model_output: torch.Tensor  # the teacher's raw output (first C channels)
    mean: torch.Tensor  # teacher's mu(x_t, t) (clipped x0, as when it samples)
    log_variance: torch.Tensor
    restarts: int  # entries that had finished and restarted from noise

    def slice(self, a: int, b: int) -> "TeacherBatch":
        def s(v):
            return None if v is None else v[a:b]

        return TeacherBatch(self.x_t[a:b], self.t[a:b], s(self.y), self.eps[a:b], self.model_output[a:b],
                            self.mean[a:b], self.log_variance[a:b], self.restarts)


class DynamicCache:
    """The entries of a DKDM cache; this rank draws from its contiguous slice [lo, hi).

    Args:
        n_total: global number of entries; T: chain length; shape: (C, H, W) of one entry.
        classes: the labels a restarted entry draws from (uniformly); None: unlabelled.
        cache_dir: where the initial entries are (read lazily, only if no checkpoint supplies them).
    """

    def __init__(self, n_total: int, T: int, shape: Sequence[int], classes: Optional[Sequence[int]] = None,
                 cache_dir: Optional[str] = None, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.n_total, self.T, self.shape = int(n_total), int(T), tuple(shape)
        self.classes = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
        self.cache_dir = cache_dir
        self.rank = dist_util.get_rank() if rank is None else rank
        self.world_size = dist_util.get_world_size() if world_size is None else world_size
        self.lo, self.hi = rank_slice(self.n_total, self.rank, self.world_size)
        self.holds_all = self.rank == 0  # rank 0 keeps every entry (it writes the checkpoints)
        self.offset = 0 if self.holds_all else self.lo
        self.x: Optional[torch.Tensor] = None
        self.t: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self._header = None

    @classmethod
    def open(cls, cache_dir: str, rank: Optional[int] = None, world_size: Optional[int] = None) -> "DynamicCache":
        """The cache prepared in ``cache_dir`` (its entries are read on first use)."""
        header = read_header(cache_dir)
        if header is None:
            raise CacheError(f"no complete DKDM cache in {cache_dir} (run scripts/dynamic_prepare.py first)")
        key = header["key"]
        cache = cls(header["n_total"], key["T"], key["shape"], key.get("classes"), cache_dir, rank, world_size)
        cache._header = header
        return cache

    @property
    def per_rank(self) -> int:
        return self.hi - self.lo

    def _ensure_loaded(self) -> None:
        if self.t is not None:
            return
        if self.cache_dir is None:
            raise CacheError("the cache has no entries: neither a cache folder nor a state_dict was given")
        lo, hi = (0, self.n_total) if self.holds_all else (self.lo, self.hi)
        self.x, self.t, self.y = read_entries(self.cache_dir, lo, hi, self._header)

    # ------------------------------------------------------------------ one step

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` global indices of this rank's slice, without replacement."""
        if n > self.per_rank:
            raise CacheError(f"a step takes {n} entries per rank but this rank's cache slice has only {self.per_rank}")
        return self.lo + torch.randperm(self.per_rank, generator=generator)[:n]

    def advance(self, teacher, diffusion, n: int, generator: torch.Generator, device,
                clip_denoised: bool = True) -> TeacherBatch:
        """Draw ``n`` entries, restart finished ones, take one teacher step, write the states back.

        Collective when a process group is active (the write-back gathers to rank 0). Draws from
        ``generator`` in a fixed order: indices, restart noise and labels, step noise.
        """
        self._ensure_loaded()
        idx = self.draw(n, generator)
        loc = idx - self.offset
        x, t = self.x[loc], self.t[loc]  # copies (advanced indexing)
        y = self.y[loc] if self.y is not None else None
        done = t == 0
        restarts = int(done.sum())
        if restarts:
            x[done] = torch.randn((restarts, *self.shape), generator=generator)
            t[done] = self.T
            if y is not None and self.classes is not None:
                y[done] = self.classes[torch.randint(0, len(self.classes), (restarts,), generator=generator)]
        noise = torch.randn((n, *self.shape), generator=generator)
        k = (t - 1).to(device)
        x_t = x.to(device)
        y_dev = y.to(device) if y is not None else None
        x_prev, out = teacher_step(teacher, diffusion, x_t, k, y_dev, noise.to(device), clip_denoised)
        self.write_back(idx, x_prev, t - 1, y)
        return TeacherBatch(x_t, k, y_dev, out["eps"], out["model_output"], out["mean"], out["log_variance"], restarts)

    def write_back(self, idx: torch.Tensor, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> None:
        """Store advanced entries: every rank's go to rank 0, a rank's own go to itself (collective)."""
        x = x.detach().to("cpu", torch.float32)
        meta = torch.stack([idx.cpu(), t.cpu(), (y.cpu() if y is not None else torch.zeros_like(t).cpu())], 1)
        if self.world_size > 1 and dist_util.is_initialized():
            x = dist_util.all_gather_tensor(x)
            meta = dist_util.all_gather_tensor(meta)
        loc = meta[:, 0] - self.offset
        mine = (loc >= 0) & (loc < self.t.shape[0])
        loc = loc[mine]
        self.x[loc] = x[mine]
        self.t[loc] = meta[mine, 1]
        if self.y is not None:
            self.y[loc] = meta[mine, 2]

    # ------------------------------------------------------------------ state

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Every entry (rank 0 holds them all), in global order."""
        self._ensure_loaded()
        if not self.holds_all:
            raise CacheError("only rank 0 holds the whole cache; state_dict() is for the rank that saves")
        sd = {"x": self.x.clone(), "t": self.t.clone(), "T": self.T, "n_total": self.n_total}
        if self.y is not None:
            sd["y"] = self.y.clone()
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if int(sd["n_total"]) != self.n_total or int(sd["T"]) != self.T or tuple(sd["x"].shape[1:]) != self.shape:
            raise CacheError(
                f"the checkpoint's cache ({int(sd['n_total'])} entries, T={int(sd['T'])}, {tuple(sd['x'].shape[1:])}) "
                f"does not fit this one ({self.n_total}, T={self.T}, {self.shape})"
            )
        lo, hi = (0, self.n_total) if self.holds_all else (self.lo, self.hi)
        self.x = sd["x"][lo:hi].clone()
        self.t = sd["t"][lo:hi].clone()
        self.y = sd["y"][lo:hi].clone() if "y" in sd else None
