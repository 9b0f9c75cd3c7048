"""Buffer replay: a fixed-size memory of real images from earlier tasks, mixed into each task's data.

Policies (``method.policy``):
- ``balanced`` (Continual-Diffusers' "reservoir"): after each task the task's data joins the memory
  and every stored task is cut to ``buffer_size // tasks_stored``; with ``label_uniform`` each
  task's share is split evenly over its labels (``min(share // labels, smallest label count)`` per
  label, drawn without replacement). Cuts subsample the already-cut sets.
- ``reservoir``: true reservoir sampling (Vitter's algorithm R) over the stream of all images seen,
  in task order; every image seen so far has the same chance ``buffer_size / seen`` to be kept.
- ``all_data`` keeps everything (= joint training); ``no_data`` keeps nothing (= naive).

The buffer holds indices into the training set; they are the method's resumable state.

``rehearsal_coef`` (Zajac et al. 2023 found experience replay strong with a reduced rehearsal
coefficient): unset, the buffer's images are data like the task's (one batch mean); set to lambda, the
loss is ``mean(current images' losses) + lambda * mean(buffer images' losses)`` over each batch
(``regularizers.rehearsal_loss``; the definition is ours, see there). An image is the buffer's when its
label is an old class (the tasks bring disjoint classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from ...runtime.config import ConfigError
from ..base import ANY_GENERATOR, ContinualMethod, ObjectiveWrapper, register_method, state_floats_M
from ..regularizers import rehearsal_loss

POLICIES = ("balanced", "reservoir", "all_data", "no_data")


def balanced_cut(per_task: Dict[int, np.ndarray], labels: np.ndarray, size: int, label_uniform: bool,
                 rng: np.random.RandomState) -> Dict[int, np.ndarray]:
    """Cut every stored task to ``size // len(per_task)`` indices (label-balanced if asked)."""
    share = size // max(1, len(per_task))
    out = {}
    for task, idx in sorted(per_task.items()):
        if len(idx) <= share and not label_uniform:
            out[task] = idx
            continue
        if label_uniform:
            labs = labels[idx]
            uniq = np.unique(labs)
            n_per = min(share // len(uniq), min(int((labs == u).sum()) for u in uniq))
            keep = [rng.choice(idx[labs == u], n_per, replace=False) for u in uniq]
            out[task] = np.sort(np.concatenate(keep)) if keep else idx[:0]
        else:
            out[task] = np.sort(rng.choice(idx, share, replace=False))
    return out


def reservoir_update(buffer: np.ndarray, seen: int, new: np.ndarray, size: int, rng: np.random.RandomState):
    """Algorithm R over the stream ``new`` after ``seen`` items; returns (buffer, seen)."""
    buffer = list(buffer)
    for item in new:
        if len(buffer) < size:
            buffer.append(int(item))
        else:
            j = rng.randint(0, seen + 1)
            if j < size:
                buffer[j] = int(item)
        seen += 1
    return np.asarray(buffer, dtype=np.int64), seen


class RehearsalObjective(ObjectiveWrapper):
    """The diffusion loss with the buffer's images weighted by the rehearsal coefficient (the module
    docstring). Draws t, noise and the label dropout as ``DiffusionObjective``. Logs ``data_loss`` and
    ``replay_loss``, the two means; a microbatch without images of one part counts that part as 0 (the
    term logged, and the loss)."""

    def __init__(self, base, coef: float, old_classes):
        super().__init__(base)
        self.coef = coef
        self.old_classes = torch.as_tensor(list(old_classes), dtype=torch.long)

    def __call__(self, model, x, y, ctx):
        base = self.base
        t, weights = base.sample_t(x.shape[0], x.device, ctx)
        noise = torch.randn(x.shape, generator=ctx.generator).to(x.device)
        from_buffer = torch.isin(y, self.old_classes.to(y.device))
        y = base.drop_labels(y, ctx)
        losses = self.diffusion.training_losses(model, x, t, model_kwargs=base.model_kwargs(y), noise=noise)
        base.update_sampler(t, losses["loss"])
        weighted = losses["loss"] * weights
        loss = rehearsal_loss(weighted, from_buffer, self.coef)
        terms = {k: v.detach().mean() for k, v in losses.items()}
        terms["loss"] = loss.detach()
        terms["data_loss"] = rehearsal_loss(weighted.detach(), from_buffer, 0.0)
        terms["replay_loss"] = rehearsal_loss(weighted.detach(), ~from_buffer, 0.0)
        return loss, terms


@register_method("buffer_replay", generators=ANY_GENERATOR)
class BufferReplay(ContinualMethod):
    """Train each task on its data plus a fixed-size buffer of real images of earlier tasks."""

    @dataclass
    class Config:
        name: str = "buffer_replay"
        policy: str = "balanced"  # balanced | reservoir | all_data | no_data
        buffer_size: int = 500
        label_uniform: bool = True  # balanced: split each task's share evenly over its labels
        seed: int = 0
        rehearsal_coef: Optional[float] = None  # unset: the buffer is data; lambda: loss = mean(current) + lambda mean(buffer)

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.policy not in POLICIES:
            raise ConfigError(f"method.policy {mcfg.policy!r} is not one of {', '.join(POLICIES)}")
        if mcfg.buffer_size < 0:
            raise ConfigError(f"method.buffer_size must be >= 0, got {mcfg.buffer_size}")
        if mcfg.rehearsal_coef is not None:
            if mcfg.rehearsal_coef < 0:
                raise ConfigError(f"method.rehearsal_coef must be >= 0, got {mcfg.rehearsal_coef}")
            if cfg.generator != "diffusion":
                raise ConfigError("method.rehearsal_coef weights the diffusion loss: it needs generator: diffusion")

    @classmethod
    def owns_forward(cls, mcfg):
        return mcfg.rehearsal_coef is not None

    @property
    def terms(self):
        return ("data_loss", "replay_loss") if self.mcfg.rehearsal_coef is not None else ()

    def objective(self, task, base):
        if self.mcfg.rehearsal_coef is None or task.index == 0:
            return base
        return RehearsalObjective(base, self.mcfg.rehearsal_coef, task.old_classes)

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.per_task: Dict[int, np.ndarray] = {}
        self.reservoir = np.zeros(0, dtype=np.int64)
        self.seen = 0

    def indices(self) -> np.ndarray:
        if self.mcfg.policy == "reservoir":
            return np.sort(self.reservoir)
        if not self.per_task:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.per_task[k] for k in sorted(self.per_task)])

    def task_data(self, task, x, y):
        idx = torch.as_tensor(self.indices(), dtype=torch.long)
        if len(idx) == 0:
            return x, y
        return torch.cat([x, self.ctx.x[idx]]), torch.cat([y, self.ctx.y[idx]])

    def after_task(self, task):
        m = self.mcfg
        rng = np.random.RandomState(m.seed * 1000 + task.index)
        new = self.ctx.task_indices(task.classes).numpy()
        labels = self.ctx.y.numpy()
        if m.policy == "no_data":
            return
        if m.policy == "all_data":
            self.per_task[task.index] = new
        elif m.policy == "balanced":
            self.per_task[task.index] = new
            self.per_task = balanced_cut(self.per_task, labels, m.buffer_size, m.label_uniform, rng)
        else:
            self.reservoir, self.seen = reservoir_update(self.reservoir, self.seen, rng.permutation(new),
                                                         m.buffer_size, rng)
        counts = np.bincount(labels[self.indices()], minlength=self.ctx.info.num_classes)
        self.ctx.logger.log(f"buffer after task {task.index}: {len(self.indices())} images, per class {counts.tolist()}")

    def task_columns(self, task):  # the buffer's images (held as indices into the training set)
        return {"extra_state_M": state_floats_M(images=len(self.indices()), image=self.ctx.x)}

    def state_dict(self):
        return {"per_task": {int(k): torch.from_numpy(v) for k, v in self.per_task.items()},
                "reservoir": torch.from_numpy(self.reservoir), "seen": self.seen}

    def load_state_dict(self, state):
        self.per_task = {int(k): v.numpy() for k, v in state["per_task"].items()}
        self.reservoir = state["reservoir"].numpy()
        self.seen = int(state["seen"])

