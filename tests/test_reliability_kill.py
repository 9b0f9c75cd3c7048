"""Fault class: SIGKILL at any moment. A killed 3-task continual run, rerun with the same command,
ends bit-identical to an uninterrupted one (``scripts/tools/fault_matrix.py``).

Default suite: the fault-point machinery, the comparison (it does see a difference), and one run
killed twice (during replay generation, then between a checkpoint's files and its manifest).
``-m slow``: the matrix of scripts/fault_injection.py, case by case and launcher by launcher.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from tools import fault_matrix as fm

from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime import faults

HAVE_MPI = shutil.which("mpiexec") is not None


def shared_work(tmp_path_factory) -> str:
    """One work folder per pytest session: reference runs made by one test (or module) are reused."""
    return str(tmp_path_factory.getbasetemp() / "gdcl-faults")


# ---------------------------------------------------------------------------------------------- the machinery


def test_fault_specs_parse_and_bad_specs_are_refused():
    assert faults.parse("train_step:5") == [("train_step", 5, -1, "kill")]
    assert faults.parse("evaluation:1:term, train_step:2@1:hang") == [
        ("evaluation", 1, -1, "term"), ("train_step", 2, 1, "hang")]
    for bad in ("train_step", "train_step:0", "train_step:x", "train_step:1:explode", "train_step:1@r"):
        with pytest.raises(ValueError, match="GDCL_FAULT"):
            faults.parse(bad)


def test_fault_point_fires_at_its_count_only_and_traces(tmp_path):
    code = ("from guided_diffusion.runtime import faults\n"
            "for i in range(5):\n"
            "    faults.point('a'); faults.point('b'); print(i, flush=True)\n")
    env = dict(os.environ, GDCL_FAULT="b:3", GDCL_FAULT_TRACE=str(tmp_path / "trace"))
    env.pop("RANK", None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert p.stdout.split() == ["0", "1"] and "GDCL_FAULT: kill at b #3" in p.stderr
    assert faults.read_trace(str(tmp_path / "trace")) == [("a", 1, 0), ("b", 1, 0), ("a", 2, 0), ("b", 2, 0),
                                                          ("a", 3, 0), ("b", 3, 0)]
    env["GDCL_FAULT"] = "b:3@1"  # another rank's fault: this process (rank 0) runs through
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["0", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def gd_reference(tmp_path_factory):
    work = shared_work(tmp_path_factory)
    return work, fm.reference(fm.CASES["gd"], work, "1")


def test_comparison_sees_a_changed_weight_or_metric(gd_reference, tmp_path):
    work, ref = gd_reference
    assert fm.compare_runs(ref, ref) == []
    copy = str(tmp_path / "copy")
    shutil.copytree(ref, copy)
    step = ckpt.latest_checkpoint(f"{copy}/task_2")
    files = ckpt.load_checkpoint_files(f"{copy}/task_2", step)
    sd = files[f"ema_0.9_{step:06d}.pt"]
    name = next(iter(sd))
    sd[name].view(-1)[0] = torch.nextafter(sd[name].view(-1)[0], torch.tensor(float("inf")))  # one ulp
    ckpt.write_checkpoint(f"{copy}/task_2", step, files)  # an intact checkpoint with other weights
    with open(f"{copy}/metrics.csv") as f:
        text = f.read()
    lines = text.splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    col = header.index("final_loss")
    row[col] = row[col] + "1"
    with open(f"{copy}/metrics.csv", "w") as f:
        f.write("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    diff = fm.compare_runs(ref, copy)
    assert any(f"task_2/ema_0.9_{step:06d}.pt['{name}']" in d for d in diff), diff
    assert any("column final_loss" in d for d in diff), diff
    assert len(diff) == 2, diff


def test_plan_covers_every_point_of_the_trace(gd_reference):
    work, _ = gd_reference
    trace, seconds = fm.reference_trace(fm.CASES["gd"], work, "1")
    names = {n for n, _, _ in trace}
    assert {"train_step", "replay_generation", "checkpoint_write", "atomic_write", "task_end"} <= names
    chains = fm.plan(fm.CASES["gd"], work, "1", seed=1, per_point=1, random_kills=2, chains=1)
    singles = [c[0].split(":")[0] for c in chains if len(c) == 1]
    assert sorted(set(singles)) == sorted(names | {"random"})
    assert singles.count("atomic_write") == 2 and singles.count("random") == 2
    assert len(chains[-1]) == 3 and len({f.split(":")[0] for f in chains[-1]}) == 3
    assert chains == fm.plan(fm.CASES["gd"], work, "1", seed=1, per_point=1, random_kills=2, chains=1)  # seeded


# ---------------------------------------------------------------------------------------------- killed runs


@pytest.mark.slow  # a multi-process or twice-killed run (10-20 s): -m slow; the default suite stays under 10 minutes
def test_killed_twice_then_rerun_is_bit_identical(gd_reference):
    """Killed at the 3rd replay generation (task 1, step 2), then the rerun killed between the files
    of its 2nd checkpoint and its manifest; the third run finishes equal to the uninterrupted one."""
    work, ref = gd_reference
    o = fm.inject(fm.CASES["gd"], ["replay_generation:3", "checkpoint_write:2"], work, "1", ref_dir=ref)
    assert o.fired == ["replay_generation:3", "checkpoint_write:2"] and not o.missed, o.line()
    assert o.finished and o.resumed == 2, o.line()
    assert o.resumed_at[0] == "tasks 0..0 already finished, task 1: resumed from step 2", o.line()
    assert o.mismatches == [], o.line()


def _matrix_params():
    return [pytest.param(c, x, marks=[pytest.mark.slow] + ([] if x == "1" or HAVE_MPI else
                                                            [pytest.mark.skip(reason="mpiexec not installed")]),
                         id=f"{c}-{x}") for c in fm.MATRIX_CASES for x in fm.LAUNCHERS]


@pytest.mark.parametrize("case,launcher", _matrix_params())
def test_fault_injection_matrix(tmp_path_factory, case, launcher):
    """scripts/fault_injection.py's plan for one case and launcher: 0 failed reruns, 0 mismatches."""
    work = shared_work(tmp_path_factory)
    chains = fm.plan(fm.CASES[case], work, launcher, seed=0, per_point=1, random_kills=2, chains=1)
    outcomes = [fm.inject(fm.CASES[case], chain, work, launcher) for chain in chains]
    report = fm.summary(outcomes)
    assert all(o.finished for o in outcomes), report
    assert sum(len(o.mismatches) for o in outcomes) == 0, report
    assert all(o.fired for o in outcomes if not o.faults[0].startswith("random:")), report  # the points were reached
