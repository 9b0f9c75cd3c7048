"""Kill a run at named fault points, rerun the same command, and compare with an uninterrupted run.

Used by ``tests/test_reliability_kill.py`` and ``scripts/fault_injection.py``. A *case* is a
script command (a tiny continual run); a *fault* is a ``GDCL_FAULT`` spec (``faults.point``) or
``random:<seconds>`` (SIGKILL to the whole process group after that long, as a node failure or
``scancel``). For every (case, launcher, fault):

1. run the command with the fault; it must die (``GDCL_FAULT:`` on stderr, or the random kill);
   a fault point that the run never reached is recorded as *not reached*, not as a kill;
2. run the same command again, without the fault: it must exit 0 (*resumed*);
3. compare the run folder with the uninterrupted run's: every tensor of the final checkpoint files
   of every task (model, EMA, optimizer, loop state) and of ``method_state.pt`` with
   ``torch.equal``, and every ``metrics.csv`` cell except the wall-time/cost columns. Each
   difference is a *mismatch*.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime import faults
from guided_diffusion.runtime.logger import read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository (scripts/tools/..)
COST_COLUMNS = ("sec_per_step", "steps_this_run", "img_per_sec")  # and every column ending in _sec

# A 3-task split-MNIST run small enough for a CPU test: tiny UNet, 4 steps per task, checkpoints
# every 2 steps, a 1-step DDIM teacher for the replay, grids and evaluation with 2 DDIM steps.
TINY = ["model.num_channels=32", "model.num_res_blocks=1", "model.channel_mult=1,2", "model.attention_resolutions=14",
        "model.num_head_channels=32", "model.class_cond=true", "diffusion.diffusion_steps=50", "train.batch_size=8",
        "train.num_threads=1", "train.log_interval=4", "train.save_interval=2", "train.keep_checkpoints=0",
        "train.ema_rate=0.9", "train.warmup_steps=0", "continual.limit_tasks=3", "continual.num_steps=4",
        "continual.first_task_num_steps=4", "continual.grid_per_class=1", "continual.eval_sampler=ddim2"]


@dataclass
class Case:
    """A command to break: ``scripts/<script> --config <config> <overrides>``; its run folder is
    ``<out_dir>/<name>``."""

    label: str
    config: str
    name: str
    overrides: List[str] = field(default_factory=list)
    script: str = "scripts/continual_train.py"

    def args(self, out_dir: str) -> List[str]:
        """The command's arguments; ``{work}`` in an override is the folder that holds ``out_dir``."""
        work = os.path.dirname(os.path.abspath(out_dir))
        return [self.script, "--config", self.config, *(o.replace("{work}", work) for o in self.overrides),
                f"name={self.name}", f"out_dir={out_dir}"]


CASES = {
    # generative distillation (replay generated every step), no evaluation: the default test suite's case
    "gd": Case("gd", "yaml/mnist/generative_distillation.yaml", "gd", TINY + [
        "method.teacher_steps=1", "method.replay_batch=4", "evaluation.enabled=false"]),
    # generative distillation (replay generated every step) with the per-task evaluation hook
    "gd_eval": Case("gd_eval", "yaml/mnist/generative_distillation_eval.yaml", "gd_eval", TINY + [
        "method.teacher_steps=1", "method.replay_batch=4", "evaluation.num_samples=8", "evaluation.batch_size=8",
        "evaluation.sampler=ddim2", "evaluation.metrics=fid,kld,ard,class_acc", "evaluation.train_classifier=false",
        "evaluation.classifier_path={work}/eval_classifier_mnist5k.safetensors"]),
    # generative distillation from a DKDM dynamic cache, prepared in 3 shards before tasks 1 and 2
    "dynamic_cache": Case("dynamic_cache", "yaml/mnist/gd_dynamic_cache.yaml", "dyn", TINY + [
        "method.cache_sampler=5", "method.rho=0.4", "method.replay_batch=4", "method.prepare_batch=8",
        "method.shard_size=6"]),
}

MATRIX_CASES = ("gd_eval", "dynamic_cache")  # scripts/fault_injection.py's default ("gd" is part of gd_eval)
LAUNCHERS = {"1": (), "mpiexec2": ("mpiexec", "-n", "2")}


@dataclass
class Outcome:
    """What happened to one (case, launcher) under a chain of faults, one killed run after the other."""

    case: str
    launcher: str
    faults: List[str]
    fired: List[str] = field(default_factory=list)  # faults that killed a run
    missed: List[str] = field(default_factory=list)  # faults that the run never reached (it finished)
    resumed: int = 0  # reruns after a kill that went on: to the next kill, or to the end with exit 0
    resumed_at: List[str] = field(default_factory=list)  # where each rerun took up the work (from its log)
    finished: bool = False  # the last run exited 0
    mismatches: List[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        state = (f"{len(self.mismatches)} mismatch(es)" if self.mismatches else "identical") if self.finished \
            else f"FAILED: {self.note}"
        missed = f", not reached: {' '.join(self.missed)}" if self.missed else ""
        return (f"{self.case} [{self.launcher}] killed at {' -> '.join(self.fired) or '-'}{missed}; "
                f"{self.resumed} resumed ({'; '.join(self.resumed_at)}); {state} ({self.seconds:.0f}s)")


def child_env(fault: Optional[str] = None, trace: Optional[str] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.TRACE_ENV, "GD_PROGRESS")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fault:
        env[faults.ENV] = fault
    if trace:
        env[faults.TRACE_ENV] = trace
    return env


def launch(case: Case, out_dir: str, launcher: Sequence[str] = (), fault: Optional[str] = None,
           timeout: float = 600, trace: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run the case's command (under ``launcher``) to its end; ``random:<s>`` kills it after s seconds."""
    cmd = [*launcher, sys.executable, *case.args(out_dir)]
    delay = float(fault.split(":", 1)[1]) if fault and fault.startswith("random:") else None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(None if delay is not None else fault, trace),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=delay if delay is not None else timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        err += f"\nGDCL_FAULT: random kill after {delay}s\n" if delay is not None else "\ntimed out\n"
    _kill_group(proc)  # whatever a killed rank left behind (mpiexec's other ranks)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------- comparison


def _diff(a: Any, b: Any, where: str, out: List[str]) -> None:
    """Append to ``out`` every place where the nested containers of tensors ``a`` and ``b`` differ."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b)):
            out.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}[{k!r}] missing on one side")
            else:
                _diff(a[k], b[k], f"{where}[{k!r}]", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths {len(a)} vs {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            _diff(u, v, f"{where}[{i}]", out)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        out.append(f"{where}: {a!r} vs {b!r}")


def _is_cost(column: str) -> bool:
    return column.endswith("_sec") or column in COST_COLUMNS


def compare_runs(ref_dir: str, run_dir: str) -> List[str]:
    """Every difference between two run folders of the same command (empty: identical)."""
    out: List[str] = []
    tasks = sorted(d for d in os.listdir(ref_dir) if d.startswith("task_"))
    if tasks != sorted(d for d in os.listdir(run_dir) if d.startswith("task_")):
        out.append("different task folders")
    for task in tasks:
        a, b = os.path.join(ref_dir, task), os.path.join(run_dir, task)
        if not os.path.exists(os.path.join(b, "task_done.json")):
            out.append(f"{task}: not done")
            continue
        sa, sb = ckpt.latest_checkpoint(a), ckpt.latest_checkpoint(b)
        if sa != sb or sa is None:
            out.append(f"{task}: final checkpoint step {sa} vs {sb}")
            continue
        for name in ckpt.read_manifest(a, sa)["files"]:
            _diff(ckpt.load_torch(os.path.join(a, name)), ckpt.load_torch(os.path.join(b, name)), f"{task}/{name}", out)
        if os.path.exists(os.path.join(a, "method_state.pt")):
            _diff(ckpt.load_torch(os.path.join(a, "method_state.pt")),
                  ckpt.load_torch(os.path.join(b, "method_state.pt")),
                  f"{task}/method_state.pt", out)
    ra, rb = read_csv(os.path.join(ref_dir, "metrics.csv")), read_csv(os.path.join(run_dir, "metrics.csv"))
    if len(ra) != len(rb):
        out.append(f"metrics.csv: {len(ra)} vs {len(rb)} rows")
    for u, v in zip(ra, rb):
        for k in sorted(set(u) | set(v)):
            if not _is_cost(k) and u.get(k) != v.get(k):
                out.append(f"metrics.csv task {u.get('task')} column {k}: {u.get(k)!r} vs {v.get(k)!r}")
    return out


# ---------------------------------------------------------------------------------------------- the matrix


# A small domain classifier for the evaluation columns (2 epochs, ~20 s; 0.9 test accuracy on mnist5k),
# trained once per work folder so that every run of a case is evaluated with the same one.
CLASSIFIER = ["scripts/train_eval_classifier.py", "--config", "yaml/mnist/generative_distillation_eval.yaml",
              "--epochs", "2", "--width", "16", "--feature_dim", "32", "--lr", "0.003", "train.num_threads=1"]


def prepare_work(work: str) -> None:
    """What the cases share, made once in ``work``: the evaluation classifier."""
    path = os.path.join(work, "eval_classifier_mnist5k.safetensors")
    if os.path.exists(path):
        return
    os.makedirs(work, exist_ok=True)
    p = subprocess.run([sys.executable, *CLASSIFIER, "--out", path], cwd=ROOT, env=child_env(), capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"training the evaluation classifier failed ({p.returncode}):\n{p.stderr[-3000:]}")


def reference(case: Case, work: str, launcher: str = "1") -> str:
    """The uninterrupted run of ``case`` (made once per work folder); returns its run folder.

    Beside it (in its out_dir): ``trace.txt``, every fault point the run reached (``GDCL_FAULT_TRACE``),
    and ``done``, the run's wall time in seconds."""
    if any("{work}/eval_classifier" in o for o in case.overrides):
        prepare_work(work)
    out_dir = os.path.join(work, f"{case.label}-{launcher}-ref")
    run_dir = os.path.join(out_dir, case.name)
    if not os.path.exists(os.path.join(out_dir, "done")):
        if os.path.exists(out_dir):
            import shutil

            shutil.rmtree(out_dir)  # a reference run that did not finish: start it again from nothing
        os.makedirs(out_dir)
        start = time.time()
        p = launch(case, out_dir, LAUNCHERS[launcher], trace=os.path.join(out_dir, "trace.txt"))
        if p.returncode != 0:
            raise RuntimeError(f"the uninterrupted run failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                               f"{p.stderr[-3000:]}")
        with open(os.path.join(out_dir, "done"), "w") as f:
            f.write(f"{time.time() - start:.3f}\n")
    return run_dir


def reference_trace(case: Case, work: str, launcher: str = "1"):
    """(the fault points the uninterrupted run reached as (name, n, rank), its wall time in seconds)."""
    out_dir = os.path.dirname(reference(case, work, launcher))
    with open(os.path.join(out_dir, "done")) as f:
        seconds = float(f.read().strip() or 0)
    return faults.read_trace(os.path.join(out_dir, "trace.txt")), seconds


def plan(case: Case, work: str, launcher: str = "1", seed: int = 0, per_point: int = 1, random_kills: int = 2,
         chains: int = 1) -> List[List[str]]:
    """Fault chains for (case, launcher), drawn with ``seed`` from the uninterrupted run's trace:

    * for every fault point that run reached, ``per_point`` kills at occurrences drawn at random
      (a random rank under several processes; ``atomic_write`` gets twice as many: every file is one);
    * ``random_kills`` SIGKILLs of the whole process group at a time uniform in [10 %, 90 %] of
      that run's wall time (the start-up included);
    * ``chains`` chains of three kills in a row at random points (the rerun killed again, twice).
    """
    import random

    rng = random.Random(f"{case.label}/{launcher}/{seed}")
    trace, seconds = reference_trace(case, work, launcher)
    multi = len(LAUNCHERS[launcher]) > 0

    def spec(entry) -> str:
        name, n, rank = entry
        return f"{name}:{n}@{rank}" if multi else f"{name}:{n}"

    by_name: Dict[str, List] = {}
    for entry in trace:
        by_name.setdefault(entry[0], []).append(entry)
    out: List[List[str]] = []
    for name in sorted(by_name):
        k = min(len(by_name[name]), per_point * (2 if name == "atomic_write" else 1))
        out += [[spec(e)] for e in sorted(rng.sample(by_name[name], k), key=trace.index)]
    out += [[f"random:{rng.uniform(0.1, 0.9) * seconds:.2f}"] for _ in range(random_kills)]
    for _ in range(chains):
        # Three kills at three different points; counts restart in every rerun, so each is drawn from
        # the first half of the trace (where a rerun, which skips finished work, still gets to).
        half = trace[: max(1, len(trace) // 2)]
        names = rng.sample(sorted({e[0] for e in half}), min(3, len({e[0] for e in half})))
        out.append([spec(rng.choice([e for e in half if e[0] == name])) for name in names])
    return out


def resume_point(stdout: str) -> str:
    """Where a rerun took up the work, from the lines the loop logs (``tasks 0..k already finished``,
    ``task k: resumed from step N``); "start" when it found nothing to resume from."""
    where = [ln.split(";")[0].strip() for ln in stdout.splitlines() if "already finished" in ln]
    where += [ln.split(" in ")[0].strip() for ln in stdout.splitlines() if ": resumed from step" in ln]
    return ", ".join(where) or "start"


def inject(case: Case, faults, work: str, launcher: str = "1", ref_dir: Optional[str] = None) -> Outcome:
    """Run ``case`` killed at each of ``faults`` in turn (each run the same command, resuming the
    previous one), then once more to its end; compare with the uninterrupted run."""
    faults = [faults] if isinstance(faults, str) else list(faults)
    start = time.time()
    ref_dir = ref_dir or reference(case, work, launcher)
    tag = "+".join(faults).replace(":", "_").replace("@", "r").replace(".", "p")
    out_dir = os.path.join(work, f"{case.label}-{launcher}-{tag}")
    o = Outcome(case.label, launcher, faults)
    for i, fault in enumerate(faults + [None]):
        p = launch(case, out_dir, LAUNCHERS[launcher], fault)
        fired = fault is not None and p.returncode != 0 and ("GDCL_FAULT:" in p.stderr)
        if fired or p.returncode == 0:
            if o.fired:  # a rerun after a kill that went on: to the next kill, or to the end
                o.resumed += 1
                o.resumed_at.append(resume_point(p.stdout))
        if fired:
            o.fired.append(fault)
            continue
        if p.returncode != 0:
            o.note = f"{fault or 'rerun'}: exit {p.returncode}: {p.stderr.strip()[-1500:]}"
            break
        # Exit 0: the run is complete; the faults left were not reached (a finished run does nothing more).
        o.missed += [f for f in faults[i:] if f is not None]
        o.finished = True
        o.mismatches = compare_runs(ref_dir, os.path.join(out_dir, case.name))
        break
    o.seconds = time.time() - start
    return o


def summary(outcomes: Sequence[Outcome]) -> str:
    """The figures: kill points tried, runs killed, runs resumed, mismatches (and one line per chain)."""
    lines = []
    for o in outcomes:
        lines.append(o.line())
        lines += [f"    mismatch: {m}" for m in o.mismatches[:5]]
    tried = sum(len(o.faults) for o in outcomes)
    killed = sum(len(o.fired) for o in outcomes)
    failed = sum(not o.finished for o in outcomes)
    lines.append(f"fault injection: {tried} kill points tried, {killed} runs killed, "
                 f"{sum(o.resumed for o in outcomes)} runs resumed, {sum(len(o.mismatches) for o in outcomes)} "
                 f"mismatches, {failed} failed reruns")
    return "\n".join(lines)
