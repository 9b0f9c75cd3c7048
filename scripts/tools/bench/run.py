"""The suite's runs as subprocesses of the scripts, up to ``jobs`` at once, each once what it needs
has finished (``run_suite``).

A rerun of the suite resumes: finished runs are skipped by the scripts themselves, a run cut short
resumes from its checkpoints, and runs in the archive count as finished. A finished run is archived
and its wall time goes to ``suite_times.csv``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import archive
from .plan import RunSpec
from .repo import ROOT, abs_path, commit_tag
from .suite import Suite

SCRIPTS = {"continual": "scripts/image_train.py", "solver": "scripts/classifier_cl_train.py",
           "curve": "scripts/learning_curve.py"}


def command(spec: RunSpec, launcher: Sequence[str] = ()) -> List[str]:
    script = SCRIPTS[spec.kind]
    # The solver runs in one process (its cost is the replay generation).
    launch = list(launcher) if spec.kind == "continual" else []
    return [*launch, sys.executable, os.path.join(ROOT, script), "--config", spec.config_path, *spec.overrides]


class SuiteRunError(RuntimeError):
    """A run of the suite failed; the message names it and ends with its output."""


def run_suite(suite: Suite, specs: List[RunSpec], launcher: Sequence[str] = (), log: Callable[[str], None] = print,
              only: Optional[Sequence[str]] = None, jobs: int = 1, threads: int = 0, poll: float = 10.0) -> float:
    """Run every spec (each resumes where it stopped); returns the wall seconds of this call.

    A run starts once what it ``needs`` is there: a row that shares task 0 once the run that trains
    it has finished that task (``poll``: seconds between looks), a solver once the diffusion run it
    reads has finished; up to ``jobs`` at once, in plan order. Each process gets
    ``threads`` (default: the CPU count) divided by the number of runs that can go at once, now or
    later (a process keeps its threads), so a run gets every core only when it is the last. A failed
    run stops the suite (``SuiteRunError``; rerun to resume):
    runs already started finish, no other starts. ``only``: these labels, and every run one of them
    needs (a finished one returns at once), so a selected run never starts before what it reads.
    Each run's row in ``suite_times.csv`` records the commit it ran at. Archived runs count as
    finished (``archive.restore_archived``), but one whose checkpoints a pending run reads runs again;
    a finished run is archived."""
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    out_dir = abs_path(suite.out_dir)
    times = archive.times_path(suite)
    commit = commit_tag()  # +: with uncommitted changes
    lock = threading.Lock()
    threads = threads or os.cpu_count() or 1
    jobs = max(1, jobs)
    start = time.time()
    index = {id(s): i for i, s in enumerate(specs)}

    def one(spec: RunSpec, extra: List[str]) -> None:
        cmd = command(spec, launcher) + extra
        log(f"[{index[id(spec)] + 1}/{len(specs)}] {spec.label} seed {spec.seed}: "
            f"{' '.join(cmd[cmd.index('--config'):])}")
        t0 = time.time()
        out_path = os.path.join(out_dir, f"{spec.label}_s{spec.seed}.out")
        with open(out_path, "w") as out:
            code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        sec = time.time() - t0
        with lock:
            archive.append_time(times, {"label": spec.label, "seed": spec.seed, "kind": spec.kind,
                                        "seconds": round(sec, 1), "exit": code,
                                        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "threads": extra[0].split("=")[1] if extra else "", "commit": commit})
        log(f"    {spec.label} seed {spec.seed}: {'done' if code == 0 else 'FAILED'} in {sec:.0f}s")
        if code == 0:
            with lock:
                archive.save_run(suite, spec, {"label": spec.label, "seed": spec.seed, "kind": spec.kind,
                                               "commit": commit, "seconds": round(sec, 1),
                                               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        if code != 0:
            with open(out_path) as f:
                tail = f.read()[-2000:]
            raise SuiteRunError(f"{spec.label} (seed {spec.seed}) exited with {code}; rerun the same command to "
                                f"resume. Its output ends with:\n{tail}")

    archived = archive.restore_archived(suite, specs)
    pending = [s for s in specs if (not only or s.label in only) and id(s) not in archived]
    by_key = {(s.label, s.seed): s for s in specs}
    for spec in pending:  # grows while it is walked: what the added runs need joins too
        need = by_key.get((spec.needs, spec.seed)) if spec.needs else None
        if need is None or need in pending:
            continue
        if id(need) not in archived:
            log(f"    {spec.label} seed {spec.seed} needs {need.label} seed {need.seed}: it runs too (if finished, "
                "it returns at once)")
            pending.append(need)
        elif not archive.has_checkpoints(need.run_dir):
            log(f"    {spec.label} seed {spec.seed} reads the checkpoints of {need.label} seed {need.seed}, archived "
                "elsewhere: it runs again")
            archive.clear_restored(need.run_dir)
            archived.discard(id(need))
            pending.append(need)
    pending.sort(key=lambda s: index[id(s)])
    done = {(s.label, s.seed) for s in specs if s not in pending}  # runs left out are taken as finished
    running: Dict[Any, RunSpec] = {}
    pool = ThreadPoolExecutor(jobs)
    def ready_now(s: RunSpec) -> bool:  # a row sharing task 0 goes once that task is done, a solver at the end
        if s.needs is None or (s.needs, s.seed) in done:
            return True
        need = by_key.get((s.needs, s.seed))
        return s.kind == "continual" and need is not None and archive.holds_task0(need.run_dir)

    try:
        while pending or running:
            ready = [s for s in pending if ready_now(s)]
            while ready and len(running) < jobs:
                spec = ready.pop(0)
                pending.remove(spec)
                # a run alone gets every core only when no other will start beside it: a process keeps its
                # threads, and one started with all of them beside a later one oversubscribes the cores
                at_once = min(jobs, len(running) + 1 + len(pending))  # ``ready`` is part of ``pending``
                extra = [f"train.num_threads={max(1, threads // at_once)}"] if jobs > 1 else []
                running[pool.submit(one, spec, extra)] = spec
            if not running:  # what is left waits for a run that is neither pending nor done
                raise SuiteRunError("runs wait for runs that are not in the suite: "
                                    + ", ".join(f"{s.label} needs {s.needs}" for s in pending))
            # while a row waits for another's task 0, look again every few seconds
            waits_task0 = any(s.kind == "continual" and s.needs for s in pending)
            finished, _ = wait(list(running), timeout=poll if waits_task0 else None, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                fut.result()
                done.add((spec.label, spec.seed))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return time.time() - start


__all__ = ["SCRIPTS", "command", "SuiteRunError", "run_suite"]
