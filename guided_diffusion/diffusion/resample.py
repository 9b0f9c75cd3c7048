"""Timestep samplers for training: importance sampling of t (Nichol & Dhariwal 2021, sec. 3.3).

A sampler draws t with probability p_t proportional to ``weights()`` and returns importance
weights 1 / (T p_t), so that the weighted loss keeps the uniform-t objective's mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist


def create_named_schedule_sampler(name: str, diffusion) -> "ScheduleSampler":
    """A sampler by name: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown schedule sampler {name!r}; expected 'uniform' or 'loss-second-moment'")


class ScheduleSampler(ABC):
    """A distribution over timesteps with unbiased importance weights."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Positive, not necessarily normalised, weights, one per timestep."""

    def sample(self, batch_size: int, device, generator: Optional[Union[torch.Generator, np.random.Generator]] = None):
        """Draw ``batch_size`` timesteps; return (t int64 [B], weights float32 [B]) on ``device``.

        ``generator``: a ``torch.Generator`` or ``np.random.Generator`` for reproducible draws;
        without one, NumPy's global RNG is used (as ADM).
        """
        w = self.weights()
        p = w / np.sum(w)
        if generator is None:
            idx = np.random.choice(len(p), size=(batch_size,), p=p)
        elif isinstance(generator, np.random.Generator):
            idx = generator.choice(len(p), size=(batch_size,), p=p)
        elif isinstance(generator, torch.Generator):
            probs = torch.as_tensor(p, dtype=torch.float64, device=generator.device)
            idx = torch.multinomial(probs, batch_size, replacement=True, generator=generator).cpu().numpy()
        else:
            raise TypeError(
                f"generator must be a torch.Generator or np.random.Generator, got {type(generator).__name__}"
            )
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device)
        weights = torch.from_numpy(1.0 / (len(p) * p[idx])).float().to(device)
        return t, weights

    def state_dict(self) -> dict:
        """State to save with a checkpoint (tensors only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformSampler(ScheduleSampler):
    """t uniform on {0, ..., T-1}; all weights 1."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps], dtype=np.float64)

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the observed losses."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's (t, loss) pairs; all-gathered first when torch.distributed is initialised.

        Every rank must call it with its own batch (sizes may differ); all ranks then apply the same
        update in rank order, so their samplers stay identical.
        """
        local_ts = local_ts.detach().reshape(-1)
        local_losses = local_losses.detach().reshape(-1)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())
            return
        world = dist.get_world_size()
        dev = local_ts.device
        sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(local_ts)], dtype=torch.int64, device=dev))
        sizes = [int(s.item()) for s in sizes]
        max_bs = max(sizes)
        # all_gather needs equal shapes: pad every rank's batch to the largest.
        pad_t = torch.zeros(max_bs, dtype=local_ts.dtype, device=dev)
        pad_t[: len(local_ts)] = local_ts
        pad_l = torch.zeros(max_bs, dtype=local_losses.dtype, device=local_losses.device)
        pad_l[: len(local_losses)] = local_losses
        ts_all = [torch.zeros_like(pad_t) for _ in range(world)]
        losses_all = [torch.zeros_like(pad_l) for _ in range(world)]
        dist.all_gather(ts_all, pad_t)
        dist.all_gather(losses_all, pad_l)
        ts = [x for y, n in zip(ts_all, sizes) for x in y[:n].tolist()]
        losses = [x for y, n in zip(losses_all, sizes) for x in y[:n].tolist()]
        self.update_with_all_losses(ts, losses)

    @abstractmethod
    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Update from the losses of all ranks (same arguments on every rank; deterministic)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history_per_term`` losses at t, mixed
    with ``uniform_prob`` of the uniform distribution (Nichol & Dhariwal 2021, eq. 18); uniform
    until every t has a full history."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            t = int(t)
            if self._loss_counts[t] == self.history_per_term:
                # Full: shift out the oldest loss.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict:
        return {
            "loss_history": torch.from_numpy(self._loss_history.copy()),
            "loss_counts": torch.from_numpy(self._loss_counts.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        history = np.array(torch.as_tensor(state["loss_history"]).cpu().numpy(), dtype=np.float64)
        counts = np.array(torch.as_tensor(state["loss_counts"]).cpu().numpy(), dtype=np.int64)
        if history.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape:
            raise ValueError(
                f"sampler state has loss_history {history.shape} and loss_counts {counts.shape}; "
                f"expected {self._loss_history.shape} and {self._loss_counts.shape}"
            )
        self._loss_history = history
        self._loss_counts = counts


__all__: List[str] = [
    "create_named_schedule_sampler",
    "ScheduleSampler",
    "UniformSampler",
    "LossAwareSampler",
    "LossSecondMomentResampler",
]
