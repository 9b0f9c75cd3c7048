"""Averaged gradient episodic memory (A-GEM; Chaudhry et al. 2019; ``regularizers.agem_project_``).

An episodic memory of ``memory_size`` images (reservoir sampling over every task's images, in a seeded
order, offered after each task) gives, at every step of a later task, a reference gradient g_ref: the
gradient of the diffusion objective (the run's own t sampler, loss weighting and label dropout) on
``memory_batch`` images of the memory (whose losses also feed a loss-aware t sampler, as the data's
do). A training hook reads the step's gradient g after the backward
pass and, when ``g . g_ref < 0``, projects it to ``g - (g . g_ref / g_ref . g_ref) g_ref`` before
clipping and the optimizer step. With several ranks g_ref is averaged over them (as g is).
Cost per step: one more forward and backward on the memory batch. The memory (and its generator) is
the method's state and part of each checkpoint. Default: CLoG's ``memory_size=200``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...runtime import dist_util
from ...runtime.config import ConfigError
from ...runtime.seeding import step_seed
from ...train_util import StepContext, TrainHook
from ..base import ContinualMethod, ObjectiveWrapper, register_method, state_floats_M
from ..regularizers import EpisodicMemory, agem_project_


class Projection(TrainHook):
    """After the backward pass: g_ref on a memory batch, then g projected (``agem_project_``)."""

    def __init__(self, method, task):
        self.method, self.task = method, task
        self.projected = torch.zeros((), dtype=torch.long)

    def after_backward(self, loop, step):
        m = self.method
        xm, ym = m.memory.sample(m.mcfg.memory_batch or loop.batch_per_rank)
        seed = step_seed(m.ctx.cfg.seed, self.task.index * 1_000_003 + step, 7 + loop.rank) % (2**63)
        ctx = StepContext(step, 0, 1, torch.Generator().manual_seed(seed), loop.rank, loop.world_size)
        with loop.precision.autocast(loop.device):
            loss, _ = m.base(loop.model, xm.to(loop.device), ym.to(loop.device), ctx)
        ref = list(torch.autograd.grad(loss, loop.params, allow_unused=True))
        if loop.world_size > 1:
            ref = [torch.zeros_like(p) if r is None else r for p, r in zip(loop.params, ref)]
            for r in ref:
                torch.distributed.all_reduce(r)
                r.div_(loop.world_size)
        projected = agem_project_([p.grad for p in loop.params], ref)
        self.projected = self.projected.to(projected.device) + projected.long()  # no host sync

    def state_dict(self):
        return {"memory": self.method.memory.state_dict(), "projected": int(self.projected)}

    def load_state_dict(self, state):
        self.method.memory.load_state_dict(state["memory"], self.method.ctx.device)
        self.projected = torch.tensor(state["projected"], dtype=torch.long)


@register_method("agem")
class AGEM(ContinualMethod):
    @dataclass
    class Config:
        name: str = "agem"
        memory_size: int = 200  # CLoG's memory_size
        memory_batch: int = 0  # memory images per step and rank for g_ref (0: the data batch per rank)
        seed: int = 0

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.memory_size < 1:
            raise ConfigError(f"method.memory_size must be >= 1, got {mcfg.memory_size}")
        if mcfg.memory_batch < 0:
            raise ConfigError(f"method.memory_batch must be >= 0, got {mcfg.memory_batch}")

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.memory = EpisodicMemory(mcfg.memory_size, seed=mcfg.seed)
        self.base = None
        self.hook = None

    def objective(self, task, base):
        self.base = base
        while isinstance(self.base, ObjectiveWrapper):  # composed: g_ref of the diffusion loss alone
            self.base = self.base.base
        return base

    def hooks(self, task):
        self.hook = Projection(self, task) if len(self.memory) else None
        return [self.hook] if self.hook is not None else []

    def after_task(self, task):
        x, y = self.ctx.real_data(task.classes)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(step_seed(self.mcfg.seed, task.index, 8)))
        self.memory.add(x[order].to(self.ctx.device), y[order].to(self.ctx.device))
        counts = torch.bincount(self.memory.y.cpu(), minlength=self.ctx.info.num_classes)
        self.ctx.logger.log(f"agem: memory after task {task.index}: {len(self.memory)} images, per class "
                            f"{counts.tolist()}")

    def task_columns(self, task):
        out = {"agem_projected_steps": int(self.hook.projected)} if self.hook is not None else {}
        return {**out, "extra_state_M": state_floats_M([self.memory.x])}  # the memory's images

    def state_dict(self):
        return self.memory.state_dict()

    def load_state_dict(self, state):
        self.memory.load_state_dict(state, self.ctx.device)
