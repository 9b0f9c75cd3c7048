"""One network per task (CLoG's ``ensemble``; ``continual.ensemble.TaskEnsemble``).

At the first task boundary the model becomes an ensemble of one network per task of the scenario: the
run's own network for task 0 and, for each later task, a fresh one built and initialised as the first
(seeded per task; CLoG trains each from scratch). Task k trains network k alone; a sample goes through
its label's task's network, in training and at sampling (the label names the task, as for ``lora``).
``extra_params``: the parameters beyond one network's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ... import experiment
from ...runtime.seeding import step_seed
from ..base import ContinualMethod, register_method
from ..ensemble import TaskEnsemble
from ..scenario import build_scenario
from .lora import check_task_routing


@register_method("ensemble")
class Ensemble(ContinualMethod):
    adapts_model = True

    @dataclass
    class Config:
        name: str = "ensemble"

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        check_task_routing("ensemble", cfg)

    def adapt_model(self, task, model):
        if isinstance(model, TaskEnsemble):
            return model
        ctx = self.ctx
        tasks = build_scenario(dataclasses.replace(ctx.cfg.continual, limit_tasks=-1), ctx.info.num_classes,
                               ctx.info.task_classes).tasks
        nets = [model]
        for k in range(1, len(tasks)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(step_seed(ctx.cfg.seed, k, 9) % (2**63))
                net = experiment.build_model(ctx.cfg, ctx.info)
            experiment.init_weights(ctx.cfg, net)
            nets.append(net.to(next(model.parameters()).device))
        ens = TaskEnsemble(nets, [t.classes for t in tasks], ctx.info.num_classes)
        self.extra_params = ens.parameter_count() - sum(p.numel() for p in model.parameters())
        ctx.logger.log(f"ensemble: {len(tasks)} networks, {ens.parameter_count()} parameters")
        return ens

    def import_weights(self, model, state):
        """A plain network's weights (another run's task 0) as network 0's; the later tasks' networks at their
        initial weights (as after this method's own task 0, which trains network 0 alone). An ensemble's own
        weights (a run of this method) pass unchanged."""
        if state and all(k.startswith("nets.") for k in state):
            return state
        out = {f"nets.0.{k}": v for k, v in state.items()}
        for k, v in model.state_dict().items():
            if not k.startswith("nets.0."):
                out[k] = v.detach().cpu().clone()
        return out

    def trainable(self, task, model):
        return [n for n, _ in model.named_parameters() if n.startswith(f"nets.{task.index}.")]

    def task_columns(self, task):
        return {"extra_params": self.extra_params, "extra_state_M": 0.0}
