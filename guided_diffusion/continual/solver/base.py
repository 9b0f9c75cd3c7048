"""The replay modes' registry and their base part (``continual.solver.replays`` registers the modes)."""

from __future__ import annotations

from typing import Dict, Optional, Type

import torch
import torch.nn.functional as F

from ..base import registrar

REPLAY_MODES: Dict[str, Type["Replay"]] = {}


# Class decorator: make a replay available as ``solver.replay: <name>``.
register_replay = registrar(REPLAY_MODES, "solver replay")


class Replay:
    """The base part: no replay of old classes, hard labels, cross-entropy over the batch."""

    name = "base"
    from_generator = False  # old classes replayed from the diffusion model after the previous task
    soft_targets = False  # the replayed rows' targets are the previous classifier's logits
    guides = False  # replayed images are guided (GUIDE), in chunks of solver.guidance_batch
    trims_by_default = True  # solver.trim_logits unset: logits of unseen classes masked (GUIDE)

    def __init__(self, s):
        self.s = s

    @classmethod
    def check(cls, s, cfg) -> None:
        """The mode's own checks across the solver's keys (raise ConfigError)."""

    def train_classes(self, task) -> tuple:
        """The classes whose real images the task trains on."""
        return task.classes

    def cond_fn(self, task, n: int, gen: torch.Generator, nets: dict, seen_mask, old_mask):
        """The guidance of ``n`` replayed images (None: plain conditional sampling)."""
        return None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, n_real: int, soft: Optional[torch.Tensor],
             task) -> torch.Tensor:
        """The batch's loss: rows ``[:n_real]`` real, the rest replayed (``soft``: their targets)."""
        return F.cross_entropy(logits, labels)


def trims_logits(s) -> bool:
    """``solver.trim_logits``, or when unset the replay's default: true (GUIDE), false for soft (Masip's
    solver is untrimmed)."""
    return REPLAY_MODES[s.replay].trims_by_default if s.trim_logits is None else bool(s.trim_logits)


