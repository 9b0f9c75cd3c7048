"""Memory aware synapses (Aljundi et al. 2018), as ``regularizers.MemoryAwareSynapses``.

After each task the importance of every parameter is the mean over ``num_samples`` of the task's
images of ``|d ||F(x_t, t)||^2 / d theta|`` (F: the network on a noisy image at a uniform t,
``regularizers.diffusion_outputs``; one image at a time, the official per-sample form); the
importances of the tasks add, and later tasks add ``lambd * sum Omega (theta - theta*)^2``.
Default: CLoG's ``mas_weight=5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...runtime import dist_util
from ...runtime.config import ConfigError
from ...runtime.seeding import step_seed
from ..base import ContinualMethod, PenaltyObjective, register_method, state_floats_M
from ..regularizers import MemoryAwareSynapses, diffusion_outputs, mas_importance


@register_method("mas")
class MAS(ContinualMethod):
    terms = ("data_loss", "mas_penalty")
    reads_parameters = True

    @dataclass
    class Config:
        name: str = "mas"
        lambd: float = 5.0  # CLoG's mas_weight
        num_samples: int = 100  # images of the task for the importance (split over ranks)

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.lambd < 0:
            raise ConfigError(f"method.lambd must be >= 0, got {mcfg.lambd}")
        if mcfg.num_samples < 1:
            raise ConfigError(f"method.num_samples must be >= 1, got {mcfg.num_samples}")

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.mas = MemoryAwareSynapses([p for p in ctx.model.parameters() if p.requires_grad], mcfg.lambd)

    def objective(self, task, base):
        return base if self.mas.anchor is None else PenaltyObjective(base, self.mas.penalty, "mas_penalty")

    def after_task(self, task):
        ctx = self.ctx
        x, y = ctx.real_data(task.classes)
        gen = torch.Generator().manual_seed(step_seed(ctx.cfg.seed, task.index, 5))
        pick = torch.randperm(len(x), generator=gen)[: self.mcfg.num_samples]
        mine = pick[ctx.rank :: ctx.world_size]
        outputs = diffusion_outputs(ctx.model, ctx.diffusion, x[mine], y[mine] if ctx.cfg.model.class_cond else None,
                                    seed=step_seed(ctx.cfg.seed, task.index, 6) % (2**31) + ctx.rank, device=ctx.device)
        importance = mas_importance(self.mas.params, outputs) if len(mine) else [torch.zeros_like(p) for p in
                                                                                  self.mas.params]
        if dist_util.get_world_size() > 1:  # the mean over every rank's images
            for t in importance:
                t.mul_(len(mine))
                torch.distributed.all_reduce(t)
                t.div_(len(pick))
        self.mas.consolidate(importance)
        mean = torch.stack([t.mean() for t in importance]).mean().item()
        ctx.logger.log(f"mas: importance of task {task.index} from {len(pick)} images (mean {mean:.3e})")

    def task_columns(self, task):  # Omega and theta*
        return {"extra_state_M": state_floats_M(self.mas.importance + (self.mas.anchor or []))}

    def state_dict(self):
        return self.mas.state_dict()

    def load_state_dict(self, state):
        self.mas.load_state_dict(state)
