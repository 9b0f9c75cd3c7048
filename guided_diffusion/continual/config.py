"""The ``continual`` section of a config: a class-incremental scenario and its per-task training budget
(``continual.scenario`` builds the tasks, ``continual.loop`` runs them), registered on import."""

from __future__ import annotations

from dataclasses import dataclass
from ..runtime.config import ConfigError, closest, register_section_schema
from ..sampling.config import check_sampler


@dataclass
class ContinualConfig:
    """A class-incremental scenario and its per-task training budget."""

    scenario: str = ""  # a preset (split_mnist, split_fmnist, cifar10_2, cifar10_5, cifar100_5, cifar100_10, imagenet100_5), from_data (the data's own tasks: a task dict's keys) or "" for the keys below
    num_tasks: int = 5
    classes_per_task: int = 0  # 0: (num_classes - first_task_num_classes) / (num_tasks - 1), or num_classes / num_tasks
    first_task_num_classes: int = 0  # 0: classes_per_task
    class_order: str = "fixed"  # fixed (0..C-1) | seeded (a permutation from class_order_seed) | an explicit list "3,1,4,..."
    class_order_seed: int = 0
    num_steps: int = 500  # training steps per task
    first_task_num_steps: int = -1  # -1: num_steps
    limit_tasks: int = -1  # stop after this many tasks (-1: all)
    grid_per_class: int = 8  # samples per seen class in each task's grid (0: none)
    eval_sampler: str = "ddim25"  # the grids' sampler, and the evaluation's by default: ddimN (DDIM, eta 0) | N (ancestral) | unipcN ...
    teacher_ema: bool = True  # the teacher is the EMA (first rate) of the previous task, else the raw weights
    init_from: str = ""  # a run folder whose finished task 0 this run takes instead of training it (same data, model, diffusion, training, seed and first task; continual/warm_start.py)


def check_class_order(spec: str) -> None:
    """``continual.class_order``: fixed, seeded or a list of distinct class ids (checked against the data's
    classes when the scenario is built)."""
    text = str(spec).strip()
    if text in ("fixed", "seeded"):
        return
    if not text.replace(",", "").strip():
        raise ConfigError("continual.class_order is empty: give fixed (0..C-1), seeded, or the classes in order, "
                          "e.g. 0,1,2,...,9")
    try:
        order = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"continual.class_order must be fixed, seeded or a list of class ids, got {spec!r}"
                          f"{closest(text, ('fixed', 'seeded'))}") from None
    twice = sorted({c for c in order if order.count(c) > 1})
    if twice:
        raise ConfigError(f"continual.class_order lists class {', '.join(map(str, twice))} more than once: "
                          "each class comes in one task")
    if min(order) < 0:
        raise ConfigError(f"continual.class_order holds a negative class id ({min(order)})")


register_section_schema("continual", None, ContinualConfig,
                        key_checks={"class_order": check_class_order,
                                    "eval_sampler": lambda v: check_sampler("continual.eval_sampler", v)})
