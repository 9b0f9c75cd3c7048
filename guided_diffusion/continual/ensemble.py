"""One network per task, each sample routed to the network of its label's task (CLoG's ``ensemble``).

CLoG (linhaowei1/CLoG, ``method='ensemble'``) trains one model per task from scratch and, at sampling,
takes ``task_id = labels[0] // class_num`` (the whole batch to the first label's model). Here each sample
is routed by its own label through ``lora.task_table`` of the scenario's class groups (any class order),
so a batch may mix tasks; a network without labels is routed by an explicit ``tasks`` argument.

Parameters: ``num_tasks x`` those of one network (``parameter_count``), the upper bound of per-task
capacity against which LoRA's ``num_tasks x rank x ...`` adapters are measured. state_dict names are
``nets.<task>.<the network's own names>``, so an ADM checkpoint loads into a member with
``ensemble.nets[k].load_state_dict(sd)``.

It lives with the continual methods, not beside ``lora`` among the networks, because what it adds is the
task structure (how many members, which label goes where), not a layer; it shares the label-to-task table
and the per-sample split with ``lora``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..models.lora import split_by_task, task_table, tasks_of_labels


def _take(value, idx: torch.Tensor, n: int):
    """``value`` restricted to the samples ``idx``: tensors with n rows, and tuples/lists of them (a text's
    (states, pooled)); anything else as is."""
    if torch.is_tensor(value) and value.ndim and value.shape[0] == n:
        return value.index_select(0, idx.to(value.device))
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, idx, n) for v in value)
    return value


class TaskEnsemble(nn.Module):
    """``forward(x, timesteps, y=None, tasks=None, **kwargs)``: sample i goes through ``nets[task_i]`` with
    its own timestep, label and other per-sample arguments; ``task_i`` is ``tasks[i]`` when given (an int
    for the whole batch, or [N]), else the task of ``y[i]`` in ``class_groups``."""

    def __init__(self, nets: Sequence[nn.Module], class_groups: Optional[Sequence[Sequence[int]]] = None,
                 num_classes: Optional[int] = None):
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        self.nets = nn.ModuleList(nets)
        table = None if class_groups is None else task_table(class_groups, num_classes)
        if table is not None and len(class_groups) > len(nets):
            raise ValueError(f"{len(class_groups)} class groups for {len(nets)} networks")
        self.register_buffer("task_of_label", table, persistent=False)

    @classmethod
    def from_factory(cls, make_net: Callable[[], nn.Module], num_tasks: int, class_groups=None, num_classes=None):
        """``num_tasks`` fresh networks from ``make_net`` (CLoG trains each from scratch)."""
        return cls([make_net() for _ in range(num_tasks)], class_groups, num_classes)

    @property
    def num_classes(self):
        return getattr(self.nets[0], "num_classes", None)

    def parameter_count(self) -> int:
        """All members' parameters: ``len(nets) x`` one network's when they are alike."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, timesteps, y=None, tasks: Union[int, torch.Tensor, None] = None, **kwargs):
        n = x.shape[0]
        if tasks is None:
            if self.task_of_label is None or y is None:
                raise ValueError("no task for this batch: give labels of the class groups, or tasks=")
            tasks = tasks_of_labels(self.task_of_label, y)
        groups = split_by_task(tasks, n)
        bad = [k for k, _ in groups if not 0 <= k < len(self.nets)]
        if bad:
            raise ValueError(f"tasks {bad} outside the ensemble's {len(self.nets)} networks")
        label = {} if y is None else {"y": y}
        out = None
        for k, idx in groups:
            if idx is None:
                return self.nets[k](x, timesteps, **label, **kwargs)
            args = {key: _take(v, idx, n) for key, v in {**label, **kwargs}.items()}
            o = self.nets[k](x.index_select(0, idx), _take(timesteps, idx, n), **args)
            if out is None:
                out = o.new_zeros((n, *o.shape[1:]))
            out = out.index_copy(0, idx, o)
        return out
