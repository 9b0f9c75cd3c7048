"""L2 to the previous task's weights (CLoG's ``l2``): the objective adds
``lambd * sum_p ||theta_p - theta*_p||^2``, theta* the weights at the end of the previous task
(``regularizers.L2Anchor``; ``reduction: clog`` takes each tensor's mean, CLoG's form, for which its
``L2_weight=500`` is meant).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...runtime.config import ConfigError
from ..base import ContinualMethod, PenaltyObjective, register_method, state_floats_M
from ..regularizers import L2_REDUCTIONS, L2Anchor


@register_method("l2")
class L2(ContinualMethod):
    terms = ("data_loss", "l2_penalty")
    reads_parameters = True

    @dataclass
    class Config:
        name: str = "l2"
        lambd: float = 500.0  # CLoG's L2_weight
        reduction: str = "clog"  # clog: sum over tensors of each tensor's mean square (CLoG's) | sum: of all squares

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.reduction not in L2_REDUCTIONS:
            raise ConfigError(f"method.reduction {mcfg.reduction!r} is not one of {', '.join(L2_REDUCTIONS)}")
        if mcfg.lambd < 0:
            raise ConfigError(f"method.lambd must be >= 0, got {mcfg.lambd}")

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.reg = L2Anchor([p for p in ctx.model.parameters() if p.requires_grad], mcfg.lambd, mcfg.reduction)

    def objective(self, task, base):
        return base if self.reg.anchor is None else PenaltyObjective(base, self.reg.penalty, "l2_penalty")

    def after_task(self, task):
        self.reg.consolidate()

    def task_columns(self, task):
        return {"extra_state_M": state_floats_M(self.reg.anchor or [])}  # theta*

    def state_dict(self):
        return self.reg.state_dict()

    def load_state_dict(self, state):
        self.reg.load_state_dict(state)
