"""Class-incremental scenarios: which classes each task brings, and how long each task trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from ..runtime.config import ConfigError

# Presets of the papers: (num_tasks, first_task_num_classes, classes_per_task, expected num_classes).
PRESETS = {
    "split_mnist": (5, 2, 2, 10),
    "split_fmnist": (5, 2, 2, 10),
    "split_digits": (5, 2, 2, 10),
    "cifar10_2": (2, 5, 5, 10),
    "cifar10_5": (5, 2, 2, 10),
    "cifar100_5": (5, 20, 20, 100),
    "cifar100_10": (10, 10, 10, 100),
    "imagenet100_5": (5, 20, 20, 100),
}


@dataclass(frozen=True)
class Task:
    index: int  # 0-based
    classes: tuple  # classes this task brings
    seen_classes: tuple  # all classes up to and including this task, in scenario order
    num_steps: int

    @property
    def old_classes(self) -> tuple:
        return self.seen_classes[: len(self.seen_classes) - len(self.classes)]


@dataclass(frozen=True)
class Scenario:
    class_order: tuple
    tasks: tuple

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


def _class_order(spec: str, seed: int, num_classes: int) -> List[int]:
    if spec == "fixed":
        return list(range(num_classes))
    if spec == "seeded":
        return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]
    try:
        order = [int(c) for c in spec.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"continual.class_order must be fixed, seeded or a list of class ids, got {spec!r}") from None
    if sorted(order) != sorted(set(order)) or any(not 0 <= c < num_classes for c in order):
        raise ConfigError(
            f"continual.class_order {spec!r} must list distinct class ids in [0, {num_classes})"
        )
    return order


FROM_DATA = "from_data"  # the data set's own tasks (a task dict's keys), in their order


def _data_tasks(c, num_classes: int, task_classes: Sequence[Sequence[int]]) -> Scenario:
    """``continual.scenario: from_data``: task k brings the classes of the data's k-th task."""
    if not task_classes:
        raise ConfigError(f"continual.scenario {FROM_DATA} takes the tasks of the data set, and this one has none "
                          "(data.dataset task_dict: a Continual-Diffusers task dict)")
    seen: dict = {}
    for k, classes in enumerate(task_classes):
        for cl in classes:
            if cl in seen:
                raise ConfigError(f"continual.scenario {FROM_DATA}: class {cl} occurs in the data's tasks {seen[cl]} "
                                  f"and {k}; class-incremental tasks bring disjoint classes")
            seen[cl] = k
    order = [int(cl) for classes in task_classes for cl in classes]
    tasks = []
    n_tasks = len(task_classes) if c.limit_tasks < 0 else min(len(task_classes), c.limit_tasks)
    for i in range(n_tasks):
        steps = c.first_task_num_steps if (i == 0 and c.first_task_num_steps > 0) else c.num_steps
        start = sum(len(t) for t in task_classes[:i])
        tasks.append(Task(i, tuple(int(cl) for cl in task_classes[i]), tuple(order[:start + len(task_classes[i])]),
                          steps))
    return Scenario(tuple(order), tuple(tasks))


def build_scenario(c, num_classes: int, task_classes: Sequence[Sequence[int]] = ()) -> Scenario:
    """The scenario of a ``ContinualConfig`` on a dataset with ``num_classes`` classes (and, for
    ``scenario: from_data``, the classes of each of the data's own tasks)."""
    num_tasks, first, per = c.num_tasks, c.first_task_num_classes, c.classes_per_task
    if c.scenario == FROM_DATA:
        return _data_tasks(c, num_classes, task_classes)
    if c.scenario:
        if c.scenario not in PRESETS:
            import difflib

            m = difflib.get_close_matches(c.scenario, list(PRESETS), n=1)
            hint = f" (did you mean '{m[0]}'?)" if m else ""
            raise ConfigError(f"continual.scenario {c.scenario!r} is not a preset{hint}; presets: {', '.join(PRESETS)}, "
                              f"or {FROM_DATA} (the data's own tasks)")
        num_tasks, first, per, expected = PRESETS[c.scenario]
        if num_classes != expected:
            raise ConfigError(
                f"continual.scenario {c.scenario} needs a dataset with {expected} classes; the dataset has {num_classes}"
            )
    order = _class_order(c.class_order, c.class_order_seed, num_classes)
    if num_tasks < 1:
        raise ConfigError(f"continual.num_tasks must be >= 1, got {num_tasks}")
    if per <= 0:
        if first > 0 and num_tasks > 1:
            per = (len(order) - first) // (num_tasks - 1)
        else:
            per = len(order) // num_tasks
    first = first or per
    needed = first + per * (num_tasks - 1)
    if (per <= 0 or needed > len(order)) and c.class_order not in ("fixed", "seeded"):
        raise ConfigError(
            f"the scenario needs {needed} classes ({num_tasks} tasks: {first} in the first, {per} in each other) "
            f"but continual.class_order lists {len(order)} of the dataset's {num_classes}: list every class of the "
            "scenario (or set continual.num_tasks / classes_per_task to fit the list)"
        )
    if per <= 0 or needed > len(order):
        raise ConfigError(
            f"the scenario needs {needed} classes ({num_tasks} tasks: {first} in the first, {per} in each other) "
            f"but the dataset has {len(order)} classes"
        )
    tasks, start = [], 0
    n_tasks = num_tasks if c.limit_tasks < 0 else min(num_tasks, c.limit_tasks)
    for i in range(n_tasks):
        n = first if i == 0 else per
        classes = tuple(order[start : start + n])
        start += n
        steps = c.first_task_num_steps if (i == 0 and c.first_task_num_steps > 0) else c.num_steps
        tasks.append(Task(i, classes, tuple(order[:start]), steps))
    return Scenario(tuple(order), tuple(tasks))


def select(y, classes: Sequence[int]) -> np.ndarray:
    """Indices of the samples whose label is in ``classes``."""
    y = np.asarray(y)
    return np.nonzero(np.isin(y, np.asarray(list(classes))))[0]


def check_scenario(cfg) -> None:
    """``--dry-run``'s check of a continual run's scenario against the data set's classes (the run itself
    builds it from the training split, before its config is written): reads the data's test split."""
    from ..experiment import dataset_info

    if cfg.continual.scenario != FROM_DATA:  # the data's own tasks need the training split
        build_scenario(cfg.continual, dataset_info(cfg).num_classes)
