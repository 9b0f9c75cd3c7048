"""Fault class: preemption. SIGTERM (a cluster's stop) and SIGUSR1 (SLURM's ``--signal``) make a run
write a checkpoint at the next step boundary (or keep what is finished: between tasks, between
cache shards) and exit 0 with a message saying how to resume; the same command then finishes with
exactly the result of an uninterrupted run. (TrainLoop alone: tests/test_train_util.py.)
"""

import os
import signal

import pytest
import torch
from tools import fault_matrix as fm

from guided_diffusion.dkdm.format import read_entries, read_header, shard_name
from guided_diffusion.dkdm.prepare import CacheSpec, prepare_cache
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime import faults
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.runtime.preemption import Preempted

SHAPE = (1, 6, 6)


def shared_work(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "gdcl-faults")  # as tests/test_reliability_kill.py: one reference


def _preempted_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("preempted: ")]
    assert p.returncode == 0 and len(lines) == 1, (p.stdout + p.stderr)[-3000:]
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.mark.slow  # a multi-process or twice-killed run (10-20 s): -m slow; the default suite stays under 10 minutes
def test_continual_run_preempted_twice_resumes_identically(tmp_path_factory):
    """SIGTERM after task 1's 3rd step: a checkpoint at step 3 (not a save step) and exit 0. The
    rerun gets SIGUSR1 as task 1 ends: task 1 is kept, the run stops before task 2, exit 0. The third
    run finishes bit-identical to the uninterrupted run."""
    work = shared_work(tmp_path_factory)
    case = fm.CASES["gd"]
    ref = fm.reference(case, work, "1")
    out_dir = os.path.join(work, "gd-1-signals")
    run_dir = os.path.join(out_dir, case.name)

    line = _preempted_line(fm.launch(case, out_dir, fault="train_step:7:term"))
    assert line == (f"preempted: SIGTERM received: checkpoint written at step 3 in {run_dir}/task_1; "
                    "rerun the same command to resume")
    assert ckpt.latest_checkpoint(f"{run_dir}/task_1") == 3  # save_interval is 2: written for the signal
    assert not os.path.exists(f"{run_dir}/task_1/task_done.json")

    p = fm.launch(case, out_dir, fault="task_end:1:usr1")
    line = _preempted_line(p)
    assert "task 1: resumed from step 3" in p.stdout
    assert line == (f"preempted: SIGUSR1 received before task 2: everything finished so far is saved in {run_dir}; "
                    "rerun the same command to resume")
    assert os.path.exists(f"{run_dir}/task_1/task_done.json") and not os.path.exists(f"{run_dir}/task_2")

    p = fm.launch(case, out_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tasks 0..1 already finished" in p.stdout
    assert fm.compare_runs(ref, run_dir) == []


# ---------------------------------------------------------------------------------------------- cache preparation


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.emb = torch.nn.Embedding(10, 1)

    def forward(self, x, t, y=None):
        return self.conv(x) + t.float().view(-1, 1, 1, 1) / 100 + self.emb(y).view(-1, 1, 1, 1)


@pytest.mark.parametrize("action,name", [("term", "SIGTERM"), ("usr1", "SIGUSR1")])
def test_cache_preparation_stops_between_shards_and_continues_identically(tmp_path, monkeypatch, action, name):
    spec = CacheSpec(24, 20, SHAPE, "dynamic", (0, 1, 2), 3, 7, True, identity={"teacher_sha256": "toy"})
    diffusion = create_gaussian_diffusion(steps=20, noise_schedule="cosine")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        prepare_cache(Toy(), diffusion, spec, a, prepare_batch=4, device="cpu")
        monkeypatch.setenv(faults.ENV, f"cache_prepare:2:{action}")  # the signal as the 2nd of 4 shards is written
        monkeypatch.setattr(faults, "_counts", {})
        with pytest.raises(Preempted, match=f"{name} received while preparing the cache in {b}: the shards "
                                            "written so far are kept; rerun the same command to continue"):
            prepare_cache(Toy(), diffusion, spec, b, prepare_batch=4, device="cpu")
        assert sorted(os.listdir(b)) == [shard_name(0), shard_name(1)]  # stopped after the current shard
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are restored
        monkeypatch.delenv(faults.ENV)
        stats = prepare_cache(Toy(), diffusion, spec, b, prepare_batch=4, device="cpu")
        assert stats["shards_skipped"] == 2 and stats["shards_done"] == 2
    finally:
        torch.set_num_threads(threads)
    for u, v in zip(read_entries(a, 0, 24, read_header(a)), read_entries(b, 0, 24, read_header(b))):
        assert torch.equal(u, v)


@pytest.mark.slow
def test_continual_run_preempted_during_cache_preparation(tmp_path_factory):
    """SIGTERM while task 1's DKDM cache is prepared (continual method dynamic_distillation): exit 0
    with the message; the rerun prepares the remaining shards and ends identical."""
    work = shared_work(tmp_path_factory)
    case = fm.CASES["dynamic_cache"]
    ref = fm.reference(case, work, "1")
    out_dir = os.path.join(work, "dyn-1-signals")
    run_dir = os.path.join(out_dir, case.name)
    line = _preempted_line(fm.launch(case, out_dir, fault="cache_prepare:1:term"))
    assert line.startswith(f"preempted: SIGTERM received while preparing the cache in {run_dir}/task_1/dkdm_cache")
    assert "rerun the same command to continue" in line
    p = fm.launch(case, out_dir)
    assert p.returncode == 0 and "shards already done; continuing" in p.stdout, p.stderr[-3000:]
    assert fm.compare_runs(ref, run_dir) == []
