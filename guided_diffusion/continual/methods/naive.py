"""The two references: ``naive`` fine-tuning (lower bound) and ``joint`` training (upper bound)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import ANY_GENERATOR, ContinualMethod, register_method, state_floats_M


@register_method("naive", generators=ANY_GENERATOR)
class Naive(ContinualMethod):
    """Fine-tune on each task's data alone: what forgetting looks like."""

    @dataclass
    class Config:
        name: str = "naive"

    def task_columns(self, task):
        return {"extra_state_M": 0.0}


@register_method("joint", generators=ANY_GENERATOR)
class Joint(ContinualMethod):
    """Train each task on the real data of every class seen so far: the upper bound."""

    @dataclass
    class Config:
        name: str = "joint"

    def task_data(self, task, x, y):
        return self.ctx.real_data(task.seen_classes)

    def task_columns(self, task):  # every image seen so far, kept for the next task
        return {"extra_state_M": state_floats_M(images=len(self.ctx.task_indices(task.seen_classes)), image=self.ctx.x)}
