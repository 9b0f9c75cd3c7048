"""Synaptic intelligence (Zenke, Poole & Ganguli 2017), as ``regularizers.SynapticIntelligence``.

Every optimizer step adds ``-g_unreg * delta_theta`` to the task's path integral omega (g_unreg: the
gradient of the loss without the SI penalty, before clipping; a training hook reads it after the
backward pass and the step's change after the optimizer step). At a task's end
``Omega = relu(Omega + omega / (Delta^2 + xi))``; later tasks add ``c * sum Omega (theta - theta*)^2``.
omega is part of each checkpoint (the hook's state), Omega and theta* of the method's state.
Defaults: CLoG's ``si_weight=5``, ``si_epsilon=0.01``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...runtime.config import ConfigError
from ...train_util import TrainHook
from ..base import ContinualMethod, PenaltyObjective, register_method, state_floats_M
from ..regularizers import SynapticIntelligence


class PathIntegral(TrainHook):
    """Brackets each optimizer step with the path integral's ``before_step`` / ``after_step``."""

    def __init__(self, si: SynapticIntelligence, includes_penalty: bool):
        self.si, self.includes_penalty = si, includes_penalty

    def after_backward(self, loop, step):
        self.si.before_step([p.grad for p in self.si.params], self.includes_penalty)

    def after_step(self, loop, step, terms):
        self.si.after_step()

    def state_dict(self):
        return {"omega": [w.cpu() for w in self.si.omega]}

    def load_state_dict(self, state):
        self.si.omega = [w.to(p.device, p.dtype) for w, p in zip(state["omega"], self.si.params)]


@register_method("si")
class SI(ContinualMethod):
    terms = ("data_loss", "si_penalty")
    reads_parameters = True

    @dataclass
    class Config:
        name: str = "si"
        c: float = 5.0  # the penalty's strength (CLoG's si_weight)
        xi: float = 0.01  # damping of Omega = omega / (Delta^2 + xi) (CLoG's si_epsilon)

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.c < 0:
            raise ConfigError(f"method.c must be >= 0, got {mcfg.c}")
        if not mcfg.xi > 0:
            raise ConfigError(f"method.xi must be > 0, got {mcfg.xi}")

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.si = SynapticIntelligence([p for p in ctx.model.parameters() if p.requires_grad], mcfg.c, mcfg.xi)

    def objective(self, task, base):
        return base if task.index == 0 else PenaltyObjective(base, self.si.penalty, "si_penalty")

    def hooks(self, task):
        return [PathIntegral(self.si, includes_penalty=task.index > 0)]

    def after_task(self, task):
        self.si.consolidate()

    def task_columns(self, task):  # omega (the running path integral), Omega and theta*
        return {"extra_state_M": state_floats_M(self.si.omega + self.si.importance + self.si.anchor)}

    def state_dict(self):
        return self.si.state_dict()

    def load_state_dict(self, state):
        self.si.load_state_dict(state)
