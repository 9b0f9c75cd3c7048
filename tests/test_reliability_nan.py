"""Fault class: NaN/inf. A non-finite loss term or gradient stops the run (``train.nan_policy: stop``,
the default) with one line naming the task, the step and the terms, or skips the step
(``train.nan_policy: skip``); what was saved before stays intact. (TrainLoop alone, a NaN replay
term: tests/test_train_util.py.)
"""

import os
import shutil

import pytest
import torch
from test_reliability_inputs import one_error, run_script, snapshot
from test_reliability_signals import shared_work
from test_train_util import make_loop
from tools import fault_matrix as fm

from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.train_util import NonFiniteError

CASE = fm.CASES["gd"]


class InfiniteGradient:
    """A finite loss (0) whose gradient is infinite: d sqrt(u)/du at u = 0."""

    def __call__(self, model, x, y, ctx):
        p = next(model.parameters())
        loss = torch.sqrt((p - p.detach()).pow(2).sum())
        return loss, {"loss": loss.detach(), "mse": loss.detach()}


def test_infinite_gradient_is_named_and_checkpoints_stay(tmp_path):
    loop = make_loop(tmp_path, steps=2, save_interval=1)
    loop.run()
    before = snapshot(tmp_path)
    bad = make_loop(tmp_path, steps=4, save_interval=1, objective=InfiniteGradient())
    assert bad.step == 2
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 2 \(terms: loss=0, mse=0\); stopping"):
        bad.run()
    assert snapshot(tmp_path) == before and ckpt.latest_checkpoint(str(tmp_path)) == 2


def without_task_2(files):
    """The snapshot of what was saved before task 2 (config.yaml is the rerun's own)."""
    return {k: v for k, v in files.items() if not k.startswith("task_2") and k != "config.yaml"}


@pytest.fixture(scope="module")
def gd_reference(tmp_path_factory):
    return fm.reference(CASE, shared_work(tmp_path_factory), "1")


def test_nan_in_a_continual_run_stops_or_skips_by_config(gd_reference, tmp_path):
    """Tasks 0 and 1 finished; task 2 rerun with a learning rate that blows the weights up at its
    first step (step 1's loss is inf/NaN): stop names task, step and terms, exit 2, nothing saved
    touched; with nan_policy=skip the task finishes, its NaN steps skipped and logged."""
    out_dir = str(tmp_path / "out")
    run = os.path.join(out_dir, CASE.name)
    shutil.copytree(gd_reference, run)
    shutil.rmtree(os.path.join(run, "task_2"))
    before = snapshot(run)
    script, *args = CASE.args(out_dir)
    # a changed learning rate in a finished run's folder is deliberate here: --force (else refused, by name)
    code, _, err = run_script(os.path.basename(script), *args, "train.lr=1e30", "--force")
    line = one_error(code, err, "non-finite loss", "at task 2, step 1 (terms: loss=", "; stopping (set "
                     "train.nan_policy=skip to skip such steps). Checkpoints already written are intact.")
    assert "data_loss" in line.split(" at task 2")[0]  # every non-finite term is named
    after = snapshot(run)
    assert without_task_2(after) == without_task_2(before)
    assert ckpt.latest_checkpoint(os.path.join(run, "task_2")) is None  # nothing of the bad task saved as done
    code, out, err = run_script(os.path.basename(script), *args, "train.lr=1e30", "train.nan_policy=skip", "--force")
    assert code == 0, err[-3000:]
    skipped = [ln for ln in out.splitlines() if "step skipped (train.nan_policy=skip)" in ln]
    assert len(skipped) == 3 and skipped[0].startswith("non-finite loss"), out[-3000:]
    assert os.path.exists(os.path.join(run, "task_2", "task_done.json"))
