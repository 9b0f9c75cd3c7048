"""The task loop shared by the generator's continual run and the continual classifier
(``continual.tasks``), on a learner that records what it is asked to do."""

import csv
import json
import types

import pytest

from guided_diffusion.continual.tasks import TaskLearner, resume_point, run_tasks
from guided_diffusion.runtime.preemption import Preempted


class Recorder(TaskLearner):
    log_prefix = "rec: "

    def __init__(self, run_dir, damaged=()):
        self.run_dir, self.damaged, self.calls = run_dir, set(damaged), []

    def done_path(self, task):
        return f"{self.run_dir}/task_{task.index}.done.json"

    def damage(self, task):
        return "its weights are truncated" if task.index in self.damaged else None

    def restore(self, task):
        self.calls.append(("restore", task.index))

    def learn(self, task):
        self.calls.append(("learn", task.index))
        return {"task": task.index, "loss": 1.0 / (task.index + 1)}

    def save(self, task, row):
        import os

        self.calls.append(("save", task.index, os.path.exists(self.done_path(task))))
        return {"files": {"w.pt": task.index}}

    def finished(self, task, row):
        self.calls.append(("finished", task.index))


TASKS = [types.SimpleNamespace(index=i) for i in range(4)]


def test_run_then_resume_skips_finished_tasks_and_redoes_a_damaged_one(tmp_path):
    rec, log = Recorder(tmp_path), []
    first = resume_point(TASKS[:2], rec, log.append)
    run_tasks(TASKS[:2][first:], rec, str(tmp_path))
    assert first == 0 and log == []
    # saved before the done file is written, which comes before finished
    assert rec.calls == [("learn", 0), ("save", 0, False), ("finished", 0), ("learn", 1), ("save", 1, False),
                         ("finished", 1)]
    assert json.loads(open(f"{tmp_path}/task_1.done.json").read()) == {"task": 1, "loss": 0.5, "files": {"w.pt": 1}}

    rec = Recorder(tmp_path, damaged={1})  # task 1 marked done but damaged: redone after restoring task 0
    first = resume_point(TASKS, rec, log.append)
    run_tasks(TASKS[first:], rec, str(tmp_path))
    assert first == 1
    assert log == ["task 1 is marked done but its weights are truncated; redoing it from its latest intact checkpoint",
                   "rec: tasks 0..0 already finished; continuing with task 1"]
    assert [c for c in rec.calls if c[0] != "save" and c[0] != "finished"] == [("restore", 0), ("learn", 1),
                                                                               ("learn", 2), ("learn", 3)]
    rows = list(csv.DictReader(open(f"{tmp_path}/metrics.csv")))
    assert [r["task"] for r in rows] == ["0", "1", "2", "3"]  # the redone task's row replaced, not repeated


def test_a_preemption_signal_stops_between_tasks_with_the_finished_ones_kept(tmp_path):
    flag = types.SimpleNamespace(received=None)
    rec = Recorder(tmp_path)

    def learn_then_signal(task, learn=rec.learn):
        flag.received = "SIGTERM"
        return learn(task)

    rec.learn = learn_then_signal
    with pytest.raises(Preempted, match="SIGTERM received before task 1: everything finished so far is saved in"):
        run_tasks(TASKS, rec, str(tmp_path), flag)
    assert [c for c in rec.calls if c[0] == "learn"] == [("learn", 0)]
    assert (tmp_path / "task_0.done.json").exists() and not (tmp_path / "task_1.done.json").exists()
