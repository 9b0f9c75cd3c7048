"""One task loop for every continual learner: the diffusion model's (``continual.loop``) and the
classifier's (``continual.solver``).

A learner (``TaskLearner``) knows how to learn one task and what of it must survive; ``resume_point``
and ``run_tasks`` do the rest, the same way for both:

- resume: finished tasks (those with a done file) are skipped; a finished task whose files are
  damaged is redone; the learner restores its state after the last intact one;
- between tasks, SIGTERM/SIGUSR1 (``PreemptionFlag``) stop the run with ``Preempted``;
- after each task: the learner saves its state, the task's row is appended to ``metrics.csv`` and
  the done file (the row and what ``save`` returns) is written last, so a task is finished exactly
  when everything it produced is on disk.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Callable, Dict, List, Optional, Sequence

import blobfile as bf

from ..runtime import dist_util
from ..runtime import checkpoint as ckpt
from ..runtime import faults
from ..runtime.logger import read_csv
from ..runtime.preemption import Preempted
from .scenario import Task


class TaskLearner:
    """What ``run_tasks`` asks of a learner (the generator's continual run, the continual classifier)."""

    log_prefix = ""  # before the resume message ("solver: ")

    def done_path(self, task: Task) -> str:
        """The file whose presence marks ``task`` finished."""
        raise NotImplementedError

    def damage(self, task: Task) -> Optional[str]:
        """None when the finished ``task``'s files are intact, else what is wrong (it is then redone)."""
        return None

    def restore(self, task: Task) -> None:
        """Take the state after the finished ``task`` (the last one before the first to run)."""

    def learn(self, task: Task) -> Dict:
        """Train and evaluate ``task``; its row of metrics.csv."""
        raise NotImplementedError

    def save(self, task: Task, row: Dict) -> Dict:
        """Save (rank 0) what must survive ``task``; what to add to its done file beside the row."""
        return {}

    def finished(self, task: Task, row: Dict) -> None:
        """After the done file is written (every rank): log, close the task's logger."""


def stop_if_preempted(flag, run_dir: str, what: str) -> None:
    """Collective: raise ``Preempted`` on every rank if SIGTERM/SIGUSR1 reached any rank."""
    if flag is not None and dist_util.any_rank(flag.received is not None):
        raise Preempted(f"{flag.received or 'a preemption signal'} received {what}: everything finished so far is "
                        f"saved in {run_dir}; rerun the same command to resume")


def append_metrics(path: str, row: Dict) -> None:
    """Append a row to a CSV, rewriting the header when new columns appear (rank 0 only); a row of the
    same task replaces the old one (a redone task)."""
    rows = [r for r in read_csv(path) if str(r.get("task")) != str(row["task"])] + [row]
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    ckpt.atomic_write_text(path, buf.getvalue())


def resume_point(tasks: Sequence[Task], learner: TaskLearner, log: Callable[[str], None]) -> int:
    """The index of the first task to run; the learner restored to the state after the one before it."""
    first = 0
    while first < len(tasks) and bf.exists(learner.done_path(tasks[first])):
        first += 1
    while first > 0 and (damage := learner.damage(tasks[first - 1])) is not None:
        log(f"task {first - 1} is marked done but {damage}; redoing it from its latest intact checkpoint")
        first -= 1
    if first > 0:
        learner.restore(tasks[first - 1])
        log(f"{learner.log_prefix}tasks 0..{first - 1} already finished; continuing with task {first}")
    return first


def run_tasks(tasks: Sequence[Task], learner: TaskLearner, run_dir: str, flag=None) -> None:
    """Learn ``tasks`` in order (those after ``resume_point``), each finished as the module says."""
    for task in tasks:
        stop_if_preempted(flag, run_dir, f"before task {task.index}")
        row = learner.learn(task)
        if dist_util.is_main():
            extra = learner.save(task, row)
            append_metrics(f"{run_dir}/metrics.csv", row)
            faults.point("task_end")
            ckpt.atomic_write_text(learner.done_path(task), json.dumps({**row, **extra}, indent=2))
        dist_util.barrier()
        learner.finished(task, row)
