"""The two references: ``naive`` fine-tuning (lower bound) and ``joint`` training (upper bound)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ANY_GENERATOR, ContinualMethod, register_method


@register_method("naive", generators=ANY_GENERATOR)
class Naive(ContinualMethod):
    """Fine-tune on each task's data alone: what forgetting looks like."""

    @dataclass
    class Config:
        name: str = "naive"


@register_method("joint", generators=ANY_GENERATOR)
class Joint(ContinualMethod):
    """Train each task on the real data of every class seen so far: the upper bound."""

    @dataclass
    class Config:
        name: str = "joint"

    def task_data(self, task, x, y):
        return self.ctx.real_data(task.seen_classes)
