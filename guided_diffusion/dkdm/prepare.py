"""Preparing a DKDM cache: teacher trajectories from noise, each stopped at its own random step.

For every entry (Xiang et al. 2025, sec. 3.3): x_T ~ N(0, I); a stopping state s uniform on
{1, ..., T-1}; teacher ancestral steps (``p_mean_variance`` with ``clip_denoised``) from T down to
s. The entries are states of partially denoised trajectories whose next timesteps are roughly
uniform over the chain: the dynamic cache's start. Cost: sum of (T - s) NFEs, about N T / 2.

Modes (DKDM's ablation): ``dynamic`` (round(rho T) batches), ``shuffled`` (one batch at random
steps), ``iterative`` (one batch of pure noise: the batch then moves in lockstep from T).

Work is cut into shards of ``shard_size`` consecutive entries, and shard i depends on (seed, i)
and the teacher only: its labels, x_T, stopping states and every step's noise come from one
generator seeded by (seed, i). The cache is therefore the same for any number of ranks. Rank r
prepares shards r, r+W, ... in lockstep (the active entries of a shard step together, in teacher
batches of ``prepare_batch``); each shard is written atomically when done and a rerun skips the
shards that exist, so a killed preparation continues. Rank 0 writes the header last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..runtime import dist_util
from ..runtime import faults
from ..runtime.logger import progress_bar
from ..runtime.precision import FP32, Precision
from ..runtime.seeding import step_seed
from ..runtime.preemption import Preempted, PreemptionFlag, preemption_requested
from .format import (
    HEADER,
    check_key,
    damaged_shards,
    read_header,
    shard_is_done,
    shard_ranges,
    write_header,
    write_shard,
)
from .teacher import teacher_step

MODES = ("dynamic", "shuffled", "iterative")


def cache_size(mode: str, rho: float, T: int, batch: int) -> int:
    """Entries for a (global) batch: round(rho T) batches for ``dynamic``, one batch otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown cache mode {mode!r}; valid: {', '.join(MODES)}")
    if mode != "dynamic":
        return batch
    batches = round(rho * T)
    if batches < 1:
        raise ValueError(f"rho = {rho} gives round(rho * T) = {batches} batches for T = {T}; it must be >= 1")
    return batches * batch


@dataclass
class CacheSpec:
    """What a cache holds and how it is made; ``key()`` is checked whenever the cache is reused."""

    n_total: int
    T: int
    shape: Tuple[int, ...]
    mode: str = "dynamic"
    classes: Optional[Tuple[int, ...]] = None  # labels drawn uniformly from these; None: unlabelled
    seed: int = 0
    shard_size: int = 1024
    clip_denoised: bool = True
    identity: Dict[str, Any] = field(default_factory=dict)  # teacher sha256, rho, batch, ...: must match on reuse
    notes: Dict[str, Any] = field(default_factory=dict)  # recorded in the header, not checked (teacher path)

    def key(self) -> Dict[str, Any]:
        return {"n_total": self.n_total, "T": self.T, "shape": list(self.shape), "mode": self.mode,
                "classes": None if self.classes is None else [int(c) for c in self.classes], "seed": self.seed,
                "shard_size": self.shard_size, "clip_denoised": self.clip_denoised, **self.identity}


def shard_draws(spec: CacheSpec, index: int, count: int):
    """Shard ``index``'s generator and its draws, in this order: stopping states, labels, x_T."""
    g = torch.Generator().manual_seed(step_seed(spec.seed, index, 0xCAC4E))
    if spec.mode == "iterative":
        stop = torch.full((count,), spec.T, dtype=torch.long)
    else:
        stop = torch.randint(1, spec.T, (count,), generator=g)
    y = None
    if spec.classes is not None:
        classes = torch.as_tensor(list(spec.classes), dtype=torch.long)
        y = classes[torch.randint(0, len(classes), (count,), generator=g)]
    x = torch.randn((count, *spec.shape), generator=g)
    return g, stop, y, x


def shard_nfe(spec: CacheSpec, index: int, count: int) -> int:
    return int((spec.T - shard_draws(spec, index, count)[1]).sum())


def cache_nfe(spec: CacheSpec) -> int:
    """The teacher NFEs that preparing the whole cache of ``spec`` takes (every entry from T down to its stop)."""
    return sum(shard_nfe(spec, i, b - a) for i, (a, b) in enumerate(shard_ranges(spec.n_total, spec.shard_size)))


def prepare_shard(teacher, diffusion, spec: CacheSpec, index: int, count: int, *, prepare_batch: int, device,
                  on_nfe=None, precision: Precision = FP32):
    """(x, t, y) of shard ``index``: every entry run from x_T down to its own stopping state (the teacher's
    forwards under ``precision``'s autocast)."""
    g, stop, y, x = shard_draws(spec, index, count)
    x = x.to(device)
    y_dev = y.to(device) if y is not None else None
    stop_dev = stop.to(device)
    for k in range(spec.T - 1, -1, -1):  # chain index k takes state k + 1 to state k
        active = torch.nonzero(stop_dev <= k).flatten()
        if active.numel() == 0:
            break  # stop >= 1 for every entry: nothing below this k is active either
        for part in active.split(prepare_batch):
            noise = torch.randn((len(part), *spec.shape), generator=g).to(device)
            t = torch.full((len(part),), k, dtype=torch.long, device=device)
            with precision.autocast(device):
                x[part], _ = teacher_step(teacher, diffusion, x[part], t, None if y_dev is None else y_dev[part],
                                          noise, spec.clip_denoised)
            if on_nfe is not None:
                on_nfe(len(part))
    return x.cpu(), stop, y


def prepare_cache(teacher, diffusion, spec: CacheSpec, cache_dir: str, *, prepare_batch: int = 256, device=None,
                  rank: Optional[int] = None, world_size: Optional[int] = None, logger=None,
                  show_progress: Optional[bool] = None, precision: Precision = FP32) -> Dict[str, Any]:
    """Prepare (or finish, or reuse) the cache of ``spec`` in ``cache_dir``; collective over ranks.
    ``precision``: the teacher's forwards (a run's ``experiment.precision_of``).

    Returns stats: ``nfe`` and ``seconds`` (this call, all ranks), ``shards_done`` /
    ``shards_skipped`` (this rank), ``complete_before`` (the cache already existed). SIGTERM/SIGUSR1
    stop it after the current shard with ``Preempted`` (the finished shards kept; a rerun continues).
    """
    flag = PreemptionFlag()  # standalone (scripts/dynamic_prepare.py) or nested in a continual run's
    try:
        return _prepare_cache(teacher, diffusion, spec, cache_dir, prepare_batch=prepare_batch, device=device,
                              rank=rank, world_size=world_size, logger=logger, show_progress=show_progress,
                              precision=precision)
    finally:
        flag.close()


def _prepare_cache(teacher, diffusion, spec: CacheSpec, cache_dir: str, *, prepare_batch, device, rank, world_size,
                   logger, show_progress, precision) -> Dict[str, Any]:
    import os

    rank = dist_util.get_rank() if rank is None else rank
    world = dist_util.get_world_size() if world_size is None else world_size
    device = device or dist_util.dev()
    key = spec.key()
    log = logger.log if logger is not None else (lambda *a: None)
    header = read_header(cache_dir)
    if header is not None:
        check_key(header, key, cache_dir)
        # Rank 0 checks every shard against the header; a damaged one is prepared again (the same entries).
        damaged = dist_util.broadcast_object(damaged_shards(cache_dir, header) if rank == 0 else None)
        if not damaged:
            return {"complete_before": True, "nfe": 0, "seconds": 0.0, "shards_done": 0, "shards_skipped": 0}
        log(f"cache {cache_dir}: {'; '.join(damaged.values())}; preparing {len(damaged)} shard(s) again")
        dist_util.barrier()
        if rank == 0:
            for name in [HEADER, *damaged]:
                if os.path.exists(os.path.join(cache_dir, name)):
                    os.remove(os.path.join(cache_dir, name))
    if rank == 0:
        os.makedirs(cache_dir, exist_ok=True)
    dist_util.barrier()
    ranges = shard_ranges(spec.n_total, spec.shard_size)
    mine = [i for i in range(len(ranges)) if i % world == rank]
    todo = [i for i in mine if not shard_is_done(cache_dir, i, ranges[i][0], ranges[i][1] - ranges[i][0], key)]
    if len(todo) < len(mine):
        log(f"cache {cache_dir}: {len(mine) - len(todo)} of this rank's {len(mine)} shards already done; continuing")
    todo_nfe = sum(shard_nfe(spec, i, ranges[i][1] - ranges[i][0]) for i in todo)
    teacher.eval()
    bar = progress_bar(total=todo_nfe, desc=f"prepare {spec.mode} cache", unit="nfe", unit_scale=True,
                       rank=rank, disable=None if show_progress is None else not show_progress)
    start = time.time()
    done_nfe = 0
    for i in todo:
        if preemption_requested():  # SIGTERM/SIGUSR1: stop between shards (the written ones are kept)
            break
        a, b = ranges[i]
        t0 = time.time()
        x, t, y = prepare_shard(teacher, diffusion, spec, i, b - a, prepare_batch=prepare_batch, device=device,
                                on_nfe=bar.update, precision=precision)
        write_shard(cache_dir, i, a, x, t, y, key)
        faults.point("cache_prepare")
        nfe = int((spec.T - t).sum())
        done_nfe += nfe
        log(f"cache shard {i + 1}/{len(ranges)}: entries [{a}, {b}), {nfe} teacher NFEs, "
            f"{nfe / max(time.time() - t0, 1e-9):.1f} NFE/s (rank {rank})")
    bar.close()
    if dist_util.any_rank(preemption_requested() is not None):
        raise Preempted(f"{preemption_requested() or 'a preemption signal'} received while preparing the cache in "
                        f"{cache_dir}: the shards written so far are kept; rerun the same command to continue")
    seconds = time.time() - start
    totals = dist_util.all_gather_object((done_nfe, seconds)) if world > 1 and dist_util.is_initialized() \
        else [(done_nfe, seconds)]
    dist_util.barrier()
    if rank == 0:
        total_nfe = sum(shard_nfe(spec, i, b - a) for i, (a, b) in enumerate(ranges))
        write_header(cache_dir, key, ranges, world_size=world, step=0, teacher_nfe=total_nfe, **spec.notes)
    dist_util.barrier()
    nfe_all = sum(n for n, _ in totals)
    sec_all = max(s for _, s in totals)
    log(f"cache {cache_dir}: {spec.n_total} entries ({spec.mode}, T={spec.T}) ready; this run: {nfe_all} teacher "
        f"NFEs in {sec_all:.1f}s ({nfe_all / max(sec_all, 1e-9):.1f} NFE/s over {world} rank(s))")
    return {"complete_before": False, "nfe": nfe_all, "seconds": sec_all, "shards_done": len(todo),
            "shards_skipped": len(mine) - len(todo)}
