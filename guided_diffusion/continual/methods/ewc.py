"""Elastic weight consolidation for diffusion models (Kirkpatrick et al. 2017).

After each task, the diagonal empirical Fisher of the diffusion loss is estimated from
``num_samples`` images of the task, **per sample**: F = mean_i (d L_i / d theta)^2, where L_i is the
diffusion loss of image i at a random t with fresh noise. (Continual-Diffusers squares batch-mean
gradients and divides by the sample count, which underestimates F by about the batch size, and
calls its loss with the arguments in the wrong order; both are fixed here.)

During later tasks the objective adds ``lambd * sum_j F_j (theta - theta*_j)^2`` (no 1/2, as the
reference) over the stored tasks j, with ``mode``:
- ``separate``: one (F, theta*) per earlier task, all penalised (the textbook EWC);
- ``online``: one running F = gamma * F + F_new and theta* = the latest weights (online EWC);
- ``last``: only the most recent task (the reference's behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from ...runtime import dist_util
from ...runtime.config import ConfigError
from ...runtime.seeding import step_seed
from ..base import ContinualMethod, PenaltyObjective, register_method, state_floats_M

MODES = ("separate", "online", "last")


def per_sample_fisher(model, diffusion, x, y, class_cond: bool, seed: int, device) -> List[torch.Tensor]:
    """Diagonal empirical Fisher: the mean over images of the squared per-image loss gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()  # no dropout noise in the estimate
    for i in range(len(x)):
        xi = x[i : i + 1].to(device)
        t = torch.randint(0, diffusion.num_timesteps, (1,), generator=gen).to(device)
        noise = torch.randn(xi.shape, generator=gen).to(device)
        kwargs = {"y": y[i : i + 1].to(device)} if class_cond else {}
        loss = diffusion.training_losses(model, xi, t, model_kwargs=kwargs, noise=noise)["loss"].sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach() ** 2)
    model.train(was)
    n = torch.tensor([float(len(x))], device=device)
    if dist_util.get_world_size() > 1:
        for f in fisher:
            torch.distributed.all_reduce(f)
        torch.distributed.all_reduce(n)
    return [f / n.item() for f in fisher]


@register_method("ewc")
class EWC(ContinualMethod):
    terms = ("data_loss", "ewc_penalty")
    reads_parameters = True

    @dataclass
    class Config:
        name: str = "ewc"
        lambd: float = 100.0
        num_samples: int = 100  # images of the task used for the Fisher (split over ranks)
        mode: str = "separate"  # separate | online | last
        gamma: float = 1.0  # online: decay of the previous Fisher

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.mode not in MODES:
            raise ConfigError(f"method.mode {mcfg.mode!r} is not one of {', '.join(MODES)}")
        if mcfg.num_samples < 1:
            raise ConfigError(f"method.num_samples must be >= 1, got {mcfg.num_samples}")

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
        self.anchors: List[Tuple[List[torch.Tensor], List[torch.Tensor]]] = []  # (F, theta*) per entry

    def penalty(self) -> torch.Tensor:
        total = torch.zeros((), device=self.params[0].device)
        for fisher, star in self.anchors:
            for p, f, s in zip(self.params, fisher, star):
                total = total + (f * (p - s) ** 2).sum()
        return total

    def objective(self, task, base):
        return PenaltyObjective(base, self.penalty, "ewc_penalty", self.mcfg.lambd) if self.anchors else base

    def after_task(self, task):
        m = self.mcfg
        x, y = self.ctx.real_data(task.classes)
        gen = torch.Generator().manual_seed(step_seed(self.ctx.cfg.seed, task.index, 5))
        pick = torch.randperm(len(x), generator=gen)[: m.num_samples]
        mine = pick[self.ctx.rank :: self.ctx.world_size]
        fisher = per_sample_fisher(self.ctx.model, self.ctx.diffusion, x[mine], y[mine],
                                   self.ctx.cfg.model.class_cond, step_seed(self.ctx.cfg.seed, task.index, 6)
                                   % (2**31) + self.ctx.rank, self.ctx.device)
        star = [p.detach().clone() for p in self.params]
        if m.mode == "separate":
            self.anchors.append((fisher, star))
        elif m.mode == "online" and self.anchors:
            old = self.anchors[0][0]
            self.anchors = [([m.gamma * o + f for o, f in zip(old, fisher)], star)]
        else:
            self.anchors = [(fisher, star)]
        mean_f = torch.stack([f.mean() for f in fisher]).mean().item()
        self.ctx.logger.log(f"ewc: Fisher of task {task.index} from {len(pick)} images (mean {mean_f:.3e})")

    def task_columns(self, task):  # (F, theta*) of every stored entry
        return {"extra_state_M": state_floats_M([t for F, S in self.anchors for t in F + S])}

    def state_dict(self):
        return {"anchors": [([f.cpu() for f in F], [s.cpu() for s in S]) for F, S in self.anchors]}

    def load_state_dict(self, state):
        dev = self.params[0].device
        self.anchors = [([f.to(dev) for f in F], [s.to(dev) for s in S]) for F, S in state["anchors"]]
