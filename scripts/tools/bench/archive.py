"""The benchmark's committed record of finished runs (``<report_dir>/runs/``) and of their times.

A suite takes hours a seed on a CPU, more than one working session, and its run folders (under
``experiments/``, ignored by git: checkpoints of megabytes each) do not outlive the machine. So when a
run finishes, what its report needs is copied to the archive, which is small and committed: its
``metrics.csv``, ``config.yaml``, a learning curve's ``curve.csv`` and ``label.txt``, and each task's grid
(``task_k/samples.png``) and ``progress.csv``, then ``archived.json`` (label, seed, commit, seconds:
written last, it marks the copy complete). On a new machine the suite restores an archived run into
its folder (marked ``restored.json``) and counts it as finished; only a run whose *checkpoints*
another run needs (the diffusion run a solver replays from) runs again, from a cleared folder.

Each run process also gets a row in ``<archive_dir>/suite_times.csv`` (``append_time``): its label,
seed, seconds, exit code, threads and the commit it ran at.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from guided_diffusion.runtime.checkpoint import atomic_write_text
from guided_diffusion.runtime.logger import read_csv

from .repo import abs_path

if TYPE_CHECKING:
    from .plan import RunSpec
    from .suite import Suite

MARK = "archived.json"  # in the archive: the copy is complete
RESTORED = "restored.json"  # in a run folder: its files came from the archive (no checkpoints)
RUN_FILES = ("metrics.csv", "config.yaml", "curve.csv", "label.txt")  # label.txt: a curve's name
TASK_FILES = ("samples.png", "progress.csv")


def _files(run_dir: str):
    """(relative path) of the files of ``run_dir`` that the archive keeps."""
    for n in RUN_FILES:
        if os.path.isfile(os.path.join(run_dir, n)):
            yield n
    for d in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        if d.startswith("task_") and os.path.isdir(os.path.join(run_dir, d)):
            for n in TASK_FILES:
                if os.path.isfile(os.path.join(run_dir, d, n)):
                    yield os.path.join(d, n)


def entry(archive_dir: str, out_dir: str, run_dir: str) -> str:
    """The archive folder of ``run_dir`` (its path below ``out_dir``: ``gd_full_s0/solver_plain``)."""
    return os.path.join(archive_dir, os.path.relpath(run_dir, out_dir))


def info(archive_dir: str, out_dir: str, run_dir: str) -> Optional[Dict[str, Any]]:
    """The archived run's record (``archived.json``), or None if it is not (completely) archived."""
    path = os.path.join(entry(archive_dir, out_dir, run_dir), MARK)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save(archive_dir: str, out_dir: str, run_dir: str, record: Dict[str, Any]) -> str:
    """Copy a finished run's report files to the archive, the record last; returns the archive folder."""
    dst = entry(archive_dir, out_dir, run_dir)
    if os.path.isfile(os.path.join(dst, MARK)):
        os.remove(os.path.join(dst, MARK))  # incomplete until the copy is done
    _copy(run_dir, dst, MARK, record)
    return dst


def _copy(src: str, dst: str, mark: str, record: Dict[str, Any]) -> None:
    """The kept files of ``src`` into ``dst``, then ``mark`` (the record) last."""
    os.makedirs(dst, exist_ok=True)
    for rel in _files(src):
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), os.path.join(dst, rel))
    atomic_write_text(os.path.join(dst, mark), json.dumps(record, indent=1, sort_keys=True) + "\n")


def has_checkpoints(run_dir: str) -> bool:
    """Whether ``run_dir`` is a run's own folder (not one restored from the archive, which has none)."""
    return os.path.isdir(run_dir) and not os.path.isfile(os.path.join(run_dir, RESTORED))


def restore(archive_dir: str, out_dir: str, run_dir: str) -> bool:
    """Fill ``run_dir`` from the archive when it holds the run and the folder does not (a run's own
    folder is left alone); True if the run is archived."""
    record = info(archive_dir, out_dir, run_dir)
    if record is None:
        return False
    if os.path.isfile(os.path.join(run_dir, "metrics.csv")) and has_checkpoints(run_dir):
        return True  # the run's own folder (this machine ran it)
    _copy(entry(archive_dir, out_dir, run_dir), run_dir, RESTORED, record)
    return True


def clear_restored(run_dir: str) -> None:
    """Empty a restored folder before its run runs again (it would append to the restored metrics);
    a run's own folder is never touched."""
    if os.path.isfile(os.path.join(run_dir, RESTORED)):
        for n in os.listdir(run_dir):
            p = os.path.join(run_dir, n)
            if n.startswith("solver_"):  # a solver's folder lives inside its diffusion run's: kept
                continue
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


# ------------------------------------------------------------------------------------------- a suite's runs


def is_archived(suite: "Suite", run_dir: str) -> bool:
    """Whether the suite's archive holds the run of ``run_dir`` (completely)."""
    return info(abs_path(suite.archive_dir), abs_path(suite.out_dir), run_dir) is not None


def holds_task0(run_dir: str) -> bool:
    """Whether ``run_dir`` holds its own finished task 0 (checkpoints, not a restored copy)."""
    return os.path.isfile(os.path.join(run_dir, "task_0", "task_done.json")) and has_checkpoints(run_dir)


def save_run(suite: "Suite", spec: "RunSpec", record: Dict[str, Any]) -> str:
    """Archive a finished run of the suite (``save``)."""
    return save(abs_path(suite.archive_dir), abs_path(suite.out_dir), spec.run_dir, record)


def restore_archived(suite: "Suite", specs: Sequence["RunSpec"]) -> set:
    """Restore the archived runs into their folders (where a folder does not hold its own finished
    run); returns the ``id`` of each archived spec."""
    return {id(s) for s in specs if restore(abs_path(suite.archive_dir), abs_path(suite.out_dir), s.run_dir)}


def archived_records(suite: "Suite", specs: Sequence["RunSpec"]) -> List[tuple]:
    """(spec, record) of the runs whose results come from the archive (no checkpoints here)."""
    records = [(s, info(abs_path(suite.archive_dir), abs_path(suite.out_dir), s.run_dir)) for s in specs
               if not has_checkpoints(s.run_dir)]
    return [(s, r) for s, r in records if r is not None]


# ------------------------------------------------------------------------------------------- run times


TIME_COLUMNS = ["label", "seed", "kind", "seconds", "exit", "finished_at", "threads", "commit"]


def times_path(suite: "Suite") -> str:
    """The suite's ``suite_times.csv`` (a row per run process), kept with the archive."""
    return os.path.join(abs_path(suite.archive_dir), "suite_times.csv")


def append_time(path: str, row: Dict[str, Any]) -> None:
    """Append a run's row to ``suite_times.csv``; a file written before a column existed is rewritten
    with the full header first (its old rows get the column empty)."""
    old = read_csv(path)
    if old and list(old[0].keys()) != TIME_COLUMNS:
        rows = [{k: r.get(k) or "" for k in TIME_COLUMNS} for r in old]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, TIME_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, TIME_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in TIME_COLUMNS})


def commits_of(times: List[Dict[str, str]]) -> str:
    """Which commits the suite's runs ran at (``suite_times.csv``), with how many runs each."""
    counts: Dict[str, int] = {}
    for r in times:
        c = (r.get("commit") or "").strip() or "an unrecorded commit"
        counts[c] = counts.get(c, 0) + 1
    return ", ".join((c if c.startswith("an ") else f"`{c}`") + f" ({n} run{'s' if n != 1 else ''})"
                     for c, n in counts.items()) or "no recorded run"


__all__ = ["MARK", "RESTORED", "entry", "info", "save", "restore", "has_checkpoints", "clear_restored",
           "is_archived", "holds_task0", "save_run", "restore_archived", "archived_records", "TIME_COLUMNS",
           "times_path", "append_time", "commits_of"]
