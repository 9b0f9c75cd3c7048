"""Several continual methods applied together: ``method: [ewc, buffer_replay]`` (Avalanche's
``plugins=[EWCPlugin(), ReplayPlugin()]``).

Each hook of ``Composite`` calls the methods' own in the listed order: their task data chain (buffer
replay's images join the batch), their objectives wrap one another (the losses add; a method whose
objective makes the step's forward pass itself, ``owns_forward``, gets the diffusion objective and the
others wrap it), their training hooks, terms, task columns (their costs, ``ADDITIVE_COLUMNS``, summed) and
states are gathered. A list that cannot
compose is refused when the config is loaded, in one line (``check_composition``).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..runtime.config import ConfigError, register_section_list
from .base import ADDITIVE_COLUMNS, METHODS, ContinualMethod


def check_composition(entries: List, cfg) -> None:
    """Which methods of a list (each already checked on its own) go together: each once; at most one owns the step's forward pass; at most one
    adapts the model, and never beside one that keeps state per parameter of the model it was built with."""
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"method lists {', '.join(twice)} more than once")
    owners = [e.name for e in entries if METHODS[e.name].owns_forward(e)]
    if len(owners) > 1:
        raise ConfigError(f"method: {' and '.join(owners)} cannot compose: each makes the step's forward pass itself "
                          "(at most one such method in a list)")
    adapting = [n for n in names if METHODS[n].adapts_model]
    if len(adapting) > 1:
        raise ConfigError(f"method: {' and '.join(adapting)} cannot compose: each chooses the model it trains")
    readers = [n for n in names if METHODS[n].reads_parameters]
    if adapting and readers:
        raise ConfigError(f"method: {adapting[0]} cannot compose with {', '.join(readers)}: it changes the model "
                          "or its trainable set, which their per-parameter state does not follow")


register_section_list("method", check_composition)


class Composite(ContinualMethod):
    """The methods of a list, applied together (see the module docstring)."""

    def __init__(self, methods: List[ContinualMethod], ctx):
        super().__init__(None, ctx)
        self.methods = methods
        self.name = "+".join(m.name for m in methods)
        self.needs_teacher = any(m.needs_teacher for m in methods)
        self.terms = tuple(dict.fromkeys(t for m in methods for t in m.terms))
        self.adapts_model = any(m.adapts_model for m in methods)

    def adapt_model(self, task, model):
        for m in self.methods:
            model = m.adapt_model(task, model)
        return model

    def trainable(self, task, model) -> Optional[List[str]]:
        sets = [s for s in (m.trainable(task, model) for m in self.methods) if s is not None]
        return sets[0] if sets else None  # at most one method adapts (check_composition)

    def import_weights(self, model, state):
        for m in self.methods:
            state = m.import_weights(model, state)
        return state

    def before_task(self, task, teacher: Optional[torch.nn.Module]) -> None:
        self.teacher = teacher
        for m in self.methods:
            m.before_task(task, teacher)

    def task_data(self, task, x, y):
        for m in self.methods:
            x, y = m.task_data(task, x, y)
        return x, y

    def objective(self, task, base):
        for m in sorted(self.methods, key=lambda m: not m.owns_forward(m.mcfg)):  # the owner innermost
            base = m.objective(task, base)
        return base

    def hooks(self, task) -> List:
        return [h for m in self.methods for h in m.hooks(task)]

    def after_task(self, task) -> None:
        for m in self.methods:
            m.after_task(task)

    def task_columns(self, task) -> Dict:
        out: Dict = {}
        for m in self.methods:
            for k, v in m.task_columns(task).items():  # the methods' costs add up (EWC's Fisher + the buffer)
                out[k] = round(out[k] + v, 6) if k in ADDITIVE_COLUMNS and k in out else v
        return out

    def state_dict(self) -> dict:
        return {m.name: m.state_dict() for m in self.methods}

    def load_state_dict(self, state: dict) -> None:
        for m in self.methods:
            m.load_state_dict(state[m.name])
