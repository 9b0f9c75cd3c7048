"""The benchmark's committed record of finished runs (``<report_dir>/runs/``).

A suite takes hours a seed on a CPU, more than one working session, and its run folders (under
``experiments/``, ignored by git: checkpoints of megabytes each) do not outlive the machine. So when a
run finishes, what its report needs is copied to the archive, which is small and committed: its
``metrics.csv``, ``config.yaml``, a learning curve's ``curve.csv``, and each task's grid
(``task_k/samples.png``) and ``progress.csv``, then ``archived.json`` (label, seed, commit, seconds:
written last, it marks the copy complete). On a new machine the suite restores an archived run into
its folder (marked ``restored.json``) and counts it as finished; only a run whose *checkpoints*
another run needs (the diffusion run a solver replays from) runs again, from a cleared folder.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional

from guided_diffusion.runtime.checkpoint import atomic_write_text

MARK = "archived.json"  # in the archive: the copy is complete
RESTORED = "restored.json"  # in a run folder: its files came from the archive (no checkpoints)
RUN_FILES = ("metrics.csv", "config.yaml", "curve.csv")
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


__all__ = ["MARK", "RESTORED", "entry", "info", "save", "restore", "has_checkpoints", "clear_restored"]
