"""Fault injection: named points where a test may kill, stop or hang this process.

The code calls ``faults.point(name)`` at the moments a long run can be interrupted (a training
step, a replay generation, an evaluation, a cache shard, a checkpoint write). With the environment
variable ``GDCL_FAULT`` unset, ``point`` is one dictionary lookup. Set, it holds one or more specs
separated by commas::

    GDCL_FAULT="replay_generation:2"        SIGKILL this process the 2nd time the point is reached
    GDCL_FAULT="train_step:5@1"             ... only on rank 1 (rank from RANK/PMI_RANK/...)
    GDCL_FAULT="train_step:5@1:hang"        rank 1 hangs there (sleeps; a hung rank)
    GDCL_FAULT="evaluation:1:term"          send SIGTERM (preemption) to itself, then carry on

Actions: ``kill`` (default; SIGKILL, no cleanup, as a cluster kill or OOM), ``term`` / ``usr1`` /
``int`` (SIGTERM, SIGUSR1 or SIGINT -- a Ctrl-C --, then carry on), ``hang`` (sleep until killed), ``exit`` (``os._exit(1)``, a crash
without cleanup). Before acting, one line ``GDCL_FAULT: <action> at <name> #<n> (pid, rank)``
goes to stderr. Counts are per process.

Points: ``train_step`` (after an optimizer step, before its checkpoint), ``replay_generation``
(teacher-made replay ready, not yet used), ``evaluation`` (samples drawn, metrics not yet
computed), ``cache_prepare`` (a DKDM cache shard written, the header not yet), ``checkpoint_write``
(a checkpoint's files written, its manifest not yet), ``atomic_write`` (a file's temporary copy
written, not yet renamed into place) and ``task_end`` (a task's metrics row written, its
``task_done.json`` not yet). See docs/reliability.md.

``GDCL_FAULT_TRACE=<file>`` appends one line ``<name> <n> <rank>`` to that file every time a point
is reached (with or without ``GDCL_FAULT``): the fault-injection matrix records an uninterrupted
run's trace and picks its kill points from it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Dict, List, Tuple

ENV = "GDCL_FAULT"
TRACE_ENV = "GDCL_FAULT_TRACE"
ACTIONS = ("kill", "term", "usr1", "int", "hang", "exit")
_SIGNALS = {"term": signal.SIGTERM, "usr1": getattr(signal, "SIGUSR1", signal.SIGTERM), "int": signal.SIGINT}
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_counts: Dict[str, int] = {}
_parsed: Dict[str, List[Tuple[str, int, int, str]]] = {}


def parse(text: str) -> List[Tuple[str, int, int, str]]:
    """``"name:n[@rank][:action],..."`` -> [(name, n, rank or -1, action)]; raises ValueError."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3) or not fields[0]:
            raise ValueError(f"{ENV}: {part!r} is not name:n[@rank][:action]")
        count, _, rank = fields[1].partition("@")
        action = fields[2] if len(fields) == 3 else "kill"
        if not count.isdigit() or int(count) < 1 or (rank and not rank.isdigit()) or action not in ACTIONS:
            raise ValueError(f"{ENV}: {part!r}: n must be >= 1, rank an integer, action one of {', '.join(ACTIONS)}")
        specs.append((fields[0], int(count), int(rank) if rank else -1, action))
    return specs


def _rank() -> int:
    for name in _RANK_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def read_trace(path: str) -> List[Tuple[str, int, int]]:
    """The (name, n, rank) lines of a ``GDCL_FAULT_TRACE`` file, in the order they were written."""
    out = []
    with open(path) as f:
        for line in f:
            name, n, rank = line.split()
            out.append((name, int(n), int(rank)))
    return out


def point(name: str) -> None:
    """A named fault point: a no-op unless ``GDCL_FAULT`` names it (see the module docstring)."""
    text = os.environ.get(ENV)
    trace = os.environ.get(TRACE_ENV)
    if not text and not trace:
        return
    n = _counts[name] = _counts.get(name, 0) + 1
    if trace:
        with open(trace, "a") as f:  # one short append per line: lines of several ranks do not interleave
            f.write(f"{name} {n} {_rank()}\n")
    if not text:
        return
    if text not in _parsed:
        _parsed[text] = parse(text)
    for spec_name, count, rank, action in _parsed[text]:
        if spec_name == name and count == n and rank in (-1, _rank()):
            sys.stderr.write(f"GDCL_FAULT: {action} at {name} #{n} (pid {os.getpid()}, rank {_rank()})\n")
            sys.stderr.flush()
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action in _SIGNALS:
                os.kill(os.getpid(), _SIGNALS[action])
            elif action == "hang":
                while True:
                    time.sleep(3600)
            else:
                os._exit(1)
