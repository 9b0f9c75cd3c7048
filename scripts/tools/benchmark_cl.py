"""The fidelity benchmark: every continual method on one scenario, same model, steps, seeds and
evaluation, then one comparison report (``scripts/benchmark_cl.py``).

A *suite* is a YAML file (``yaml/bench/split_mnist.yaml``)::

    name: split_mnist
    out_dir: experiments/bench_split_mnist        # the run folders (<label>_s<seed>/)
    report_dir: experiments/results/split_mnist   # the report (Markdown + HTML + PNGs, small)
    archive_dir: experiments/results/split_mnist/runs   # finished runs' results (default: <report_dir>/runs)
    base: yaml/mnist/generative_distillation_eval.yaml   # every run: this config ...
    settings: {continual: {num_steps: 100}}      # ... with these keys merged in (nested YAML)
    seeds: [0, 1, 2]
    share_first_task: true   # task 0 is the same for every method: train it once per seed
    methods:                 # label -> the run's ``method:`` section
      naive: {name: naive}
      gd_full: {name: generative_distillation, source: full_generation}
      ewc: yaml/mnist/ewc.yaml            # or a config file: its method section
      vae_gr: {name: generative_replay, settings: {generator: vae, ...}}  # a row's own settings: its own task 0
    solver:                  # the continual classifier, replaying from one method's diffusion runs
      diffusion: gd_full
      replays: [none, joint, plain, soft, soft_kd, guided]
      settings: {solver: {num_steps: 100}}
    scales:                  # --scale NAME: these suite keys replace the ones above (whole keys)
      paper: {base: yaml/fmnist/generative_distillation.yaml, methods: {...}, ...}

Each run is one process of ``scripts/image_train.py`` (or ``classifier_cl_train.py``) on a
config written to ``<out_dir>/configs/``; every config is built and validated before the first run
starts. A rerun of the suite resumes: finished runs are skipped by the scripts themselves, a run
cut short resumes from its checkpoints. A finished run's results are copied to the archive
(``run_archive.py``: small, committed), so a suite outlives the machine it ran on: on a new one the
archived runs count as finished. Wall times go to ``<archive_dir>/suite_times.csv``.

The report (``write_report``) has the headline tables (mean and spread over seeds), the three
claims of the papers with a verdict computed from the numbers, and, below, the per-run report of
``evaluation.report`` (per-task tables, metric-vs-task plots, every sample grid, copied).
"""

from __future__ import annotations

import copy
import csv
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import yaml
from guided_diffusion.evaluation.report import as_number, md_table
from guided_diffusion.evaluation.seeds import RULE, all_better, cell, compare, mean, mean_std
from guided_diffusion.logger import read_csv
from guided_diffusion.runtime.config import (
    ConfigError,
    load_config,
    merge_trees,
    read_tree,
)

from . import run_archive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository (scripts/tools/..)
SUITE_KEYS = ("name", "out_dir", "report_dir", "archive_dir", "base", "settings", "seeds", "share_first_task", "methods",
              "solver", "scales", "description", "learning_curve")
CURVE_KEYS = ("classes", "points", "num_samples")


@dataclass
class Suite:
    name: str
    base: str
    methods: Dict[str, Dict[str, Any]]
    out_dir: str = "experiments/bench"
    report_dir: str = ""
    archive_dir: str = ""  # finished runs' results, committed (run_archive.py); default <report_dir>/runs
    settings: Dict[str, Any] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [0])
    share_first_task: bool = True
    solver: Dict[str, Any] = field(default_factory=dict)
    learning_curve: Dict[str, Any] = field(default_factory=dict)  # task 0's learning curve (CURVE_KEYS)
    description: str = ""
    path: str = ""
    scale: str = ""


@dataclass
class RunSpec:
    label: str  # the method's label in the suite
    seed: int
    kind: str  # continual | solver
    config_path: str
    run_dir: str
    overrides: List[str] = field(default_factory=list)
    needs: Optional[str] = None  # label of the run (same seed) that must finish first


def _merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """``a`` with ``b`` merged in: the configs' one merge (``config.merge_trees``), on copies."""
    return merge_trees(copy.deepcopy(a), copy.deepcopy(b or {}))


def _read(path: str) -> Dict[str, Any]:
    """A config file as the loader reads it (its ``base`` files merged in)."""
    return read_tree(_abs(path))


def _abs(path: str) -> str:
    return path if os.path.isabs(path) or "://" in path else os.path.join(ROOT, path)


def load_suite(path: str, scale: str = "") -> Suite:
    """Read and check a suite file; ``scale`` picks one of its ``scales`` (keys replacing the suite's)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"suite file {path} not found")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    unknown = [k for k in raw if k not in SUITE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown suite key(s) {unknown}; valid: {', '.join(SUITE_KEYS)}")
    scales = raw.pop("scales", {}) or {}
    if scale:
        if scale not in scales:
            raise ConfigError(f"{path}: no scale {scale!r}; the suite has {', '.join(scales) or 'none'}")
        raw = {**raw, **scales[scale]}
    for key in ("name", "base", "methods"):
        if not raw.get(key):
            raise ConfigError(f"{path}: the suite needs '{key}'")
    suite = Suite(**raw, path=path, scale=scale)
    if suite.solver:
        bad = [k for k in suite.solver if k not in ("diffusion", "replays", "settings")]
        if bad:
            raise ConfigError(f"{path}: unknown solver key(s) {bad}; valid: diffusion, replays, settings")
        if suite.solver.get("diffusion") not in suite.methods:
            raise ConfigError(f"{path}: solver.diffusion {suite.solver.get('diffusion')!r} is not one of the methods "
                              f"({', '.join(suite.methods)})")
    if suite.learning_curve:
        bad = [k for k in suite.learning_curve if k not in CURVE_KEYS]
        if bad:
            raise ConfigError(f"{path}: unknown learning_curve key(s) {bad}; valid: {', '.join(CURVE_KEYS)}")
    if not suite.report_dir:
        suite.report_dir = os.path.join(suite.out_dir, "report")
    if not suite.archive_dir:
        suite.archive_dir = os.path.join(suite.report_dir, "runs")
    return suite


def times_path(suite: Suite) -> str:
    """The suite's ``suite_times.csv`` (a row per run process), kept with the archive."""
    return os.path.join(_abs(suite.archive_dir), "suite_times.csv")


def _archived(suite: Suite, run_dir: str) -> bool:
    return run_archive.info(_abs(suite.archive_dir), _abs(suite.out_dir), run_dir) is not None


def _holds_task0(run_dir: str) -> bool:
    """Whether ``run_dir`` holds its own finished task 0 (checkpoints, not a restored copy)."""
    return os.path.isfile(os.path.join(run_dir, "task_0", "task_done.json")) and run_archive.has_checkpoints(run_dir)


def row_settings(entry) -> Dict[str, Any]:
    """A method entry's own config settings (its ``settings`` key: e.g. another generator), merged over the
    suite's; a row with its own settings trains its own task 0 (it is not the shared one)."""
    return copy.deepcopy(entry.get("settings") or {}) if isinstance(entry, dict) else {}


def _method_section(entry) -> Dict[str, Any]:
    """A suite's method entry: the ``method:`` mapping itself (without its ``settings``), or a config file
    whose section is taken."""
    if isinstance(entry, dict):
        return {k: v for k, v in copy.deepcopy(entry).items() if k != "settings"}
    if not os.path.isfile(_abs(str(entry))):
        raise ConfigError(f"method entry {entry!r}: neither a method section nor a config file")
    return _read(str(entry)).get("method") or {"name": "naive"}


def plan(suite: Suite) -> List[RunSpec]:
    """Write every run's config (``<out_dir>/configs/``) and check it; returns the runs in order.

    Per seed: the methods in the suite's order (with ``share_first_task``, the first one trains task
    0 and the others take it, ``continual.init_from``), then the solver runs. A method run archived
    on another machine (no checkpoints here) cannot give its task 0: the first run that can (it
    holds its task 0, or it will run) trains it instead."""
    import guided_diffusion.continual.methods  # noqa: F401  (the methods' config schemas, to check the configs)
    import guided_diffusion.evaluation  # noqa: F401  (the evaluation section's schema)

    base = _read(suite.base)
    out_dir = _abs(suite.out_dir)
    cfg_dir = os.path.join(out_dir, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    specs: List[RunSpec] = []
    if suite.learning_curve:
        # Task 0's learning curve: IID training on its classes with the suite's model and evaluation.
        lc = suite.learning_curve
        cfg = _merge(base, suite.settings)
        cfg.update(name="curve_task0", seed=int(suite.seeds[0]), out_dir=out_dir)
        cfg.pop("method", None)
        path = os.path.join(cfg_dir, "curve_task0.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        try:
            load_config(path)
        except ConfigError as e:
            raise ConfigError(f"suite {suite.path}, learning_curve: {e}") from None
        classes = lc.get("classes", "0,1")
        classes = ",".join(map(str, classes)) if isinstance(classes, (list, tuple)) else str(classes)
        run_dir = os.path.join(out_dir, "curve_task0")
        specs.append(RunSpec("curve_task0", int(suite.seeds[0]), "curve", path, run_dir,
                             ["--classes", classes, "--points", str(lc.get("points", "4k:64k")),
                              "--num_samples", str(int(lc.get("num_samples", 500))), "--out", run_dir,
                              "--label", "task 0 (IID, its classes)"]))
    for seed in suite.seeds:
        first_run, first_label = None, None
        for label, method in suite.methods.items():
            name = f"{label}_s{seed}"
            own = row_settings(method)
            cfg = _merge(_merge(base, suite.settings), own)
            cfg.update(name=name, seed=int(seed), out_dir=out_dir, method=_method_section(method))
            shares = suite.share_first_task and first_run is not None and not own
            if shares:
                cfg = _merge(cfg, {"continual": {"init_from": first_run}})
            path = os.path.join(cfg_dir, f"{name}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(cfg, f, sort_keys=False)
            try:
                load_config(path)  # every run's config is valid before anything runs
            except ConfigError as e:
                raise ConfigError(f"suite {suite.path}, method {label}: {e}") from None
            run_dir = os.path.join(out_dir, name)
            needs = first_label if shares else None
            specs.append(RunSpec(label, int(seed), "continual", path, run_dir, needs=needs))
            if first_run is None and not own and (_holds_task0(run_dir) or not _archived(suite, run_dir)):
                first_run, first_label = run_dir, label
        if suite.solver:
            src = next(s for s in specs if s.seed == seed and s.label == suite.solver["diffusion"])
            cfg = _merge(read_tree(src.config_path), suite.solver.get("settings", {}))
            path = os.path.join(cfg_dir, f"solver_s{seed}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(cfg, f, sort_keys=False)
            for replay in suite.solver.get("replays", ["guided"]):
                try:
                    load_config(path, [f"solver.replay={replay}"])
                except ConfigError as e:
                    raise ConfigError(f"suite {suite.path}, solver {replay}: {e}") from None
                specs.append(RunSpec(f"solver_{replay}", int(seed), "solver", path,
                                     os.path.join(src.run_dir, f"solver_{replay}"), [f"solver.replay={replay}"],
                                     needs=src.label))
    return specs


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
              only: Optional[Sequence[str]] = None, jobs: int = 1, threads: int = 0) -> float:
    """Run every spec (each resumes where it stopped); returns the wall seconds of this call.

    A run starts once the run it ``needs`` has finished (the run that trains task 0 for the others;
    the diffusion run a solver reads), up to ``jobs`` at once, in plan order. Each process gets
    ``threads`` (default: the CPU count) divided by the number of runs that can go at that moment,
    so a run alone gets every core. A failed run stops the suite (``SuiteRunError``; rerun to resume):
    runs already started finish, no other starts. ``only``: these labels, and every run one of them
    needs (a finished one returns at once), so a selected run never starts before what it reads.
    Each run's row in ``suite_times.csv`` records the commit it ran at. Archived runs count as
    finished (``restore_archived``), but one whose checkpoints a pending run reads runs again; a
    finished run is archived."""
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    out_dir = _abs(suite.out_dir)
    times = times_path(suite)
    commit = (_git("rev-parse", "--short", "HEAD") or "unknown") + (
        "+" if _git("status", "--porcelain", "--untracked-files=no") else "")  # +: with uncommitted changes
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
            append_time(times, {"label": spec.label, "seed": spec.seed, "kind": spec.kind, "seconds": round(sec, 1),
                                "exit": code, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "threads": extra[0].split("=")[1] if extra else "", "commit": commit})
        log(f"    {spec.label} seed {spec.seed}: {'done' if code == 0 else 'FAILED'} in {sec:.0f}s")
        if code == 0:
            with lock:
                run_archive.save(_abs(suite.archive_dir), out_dir, spec.run_dir,
                                 {"label": spec.label, "seed": spec.seed, "kind": spec.kind, "commit": commit,
                                  "seconds": round(sec, 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        if code != 0:
            with open(out_path) as f:
                tail = f.read()[-2000:]
            raise SuiteRunError(f"{spec.label} (seed {spec.seed}) exited with {code}; rerun the same command to "
                                f"resume. Its output ends with:\n{tail}")

    archived = restore_archived(suite, specs)
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
        elif not run_archive.has_checkpoints(need.run_dir):
            log(f"    {spec.label} seed {spec.seed} reads the checkpoints of {need.label} seed {need.seed}, archived "
                "elsewhere: it runs again")
            run_archive.clear_restored(need.run_dir)
            archived.discard(id(need))
            pending.append(need)
    pending.sort(key=lambda s: index[id(s)])
    done = {(s.label, s.seed) for s in specs if s not in pending}  # runs left out are taken as finished
    running: Dict[Any, RunSpec] = {}
    pool = ThreadPoolExecutor(jobs)
    try:
        while pending or running:
            ready = [s for s in pending if s.needs is None or (s.needs, s.seed) in done]
            while ready and len(running) < jobs:
                spec = ready.pop(0)
                pending.remove(spec)
                at_once = min(jobs, len(running) + 1 + len(ready))
                extra = [f"train.num_threads={max(1, threads // at_once)}"] if jobs > 1 else []
                running[pool.submit(one, spec, extra)] = spec
            if not running:  # what is left waits for a run that is neither pending nor done
                raise SuiteRunError("runs wait for runs that are not in the suite: "
                                    + ", ".join(f"{s.label} needs {s.needs}" for s in pending))
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                fut.result()
                done.add((spec.label, spec.seed))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return time.time() - start


def restore_archived(suite: Suite, specs: List[RunSpec]) -> set:
    """Restore the archived runs into their folders (where a folder does not hold its own finished
    run); returns the ``id`` of each archived spec."""
    return {id(s) for s in specs if run_archive.restore(_abs(suite.archive_dir), _abs(suite.out_dir), s.run_dir)}


TIME_COLUMNS = ["label", "seed", "kind", "seconds", "exit", "finished_at", "threads", "commit"]


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


# ---------------------------------------------------------------------------------------------- report


def _n_tasks(specs: List[RunSpec]) -> int:
    """The scenario's number of tasks as the runs show it: the most rows any run's metrics.csv has
    (every run of a suite has the same scenario). A run with fewer is still running, or was cut."""
    return max((len(read_csv(os.path.join(s.run_dir, "metrics.csv"))) for s in specs), default=0)


def _wall(times: List[Dict[str, str]], label: str, seed: int) -> Optional[float]:
    secs = [as_number(r["seconds"]) for r in times if r["label"] == label and int(r["seed"]) == seed]
    return sum(s for s in secs if s is not None) if secs else None


def _matrix_of(rows_: List[Dict[str, str]], prefix: str):
    """The task x task matrix of columns ``{prefix}{j}`` (row i: after task i), or None."""
    from guided_diffusion.evaluation.class_metrics import accuracy_matrix

    keys = sorted({int(k[len(prefix):]) for r in rows_ for k in r if k.startswith(prefix) and k[len(prefix):].isdigit()})
    if not keys:
        return None
    return accuracy_matrix([{j: v for j in keys if (v := as_number(x.get(f"{prefix}{j}"))) is not None} for x in rows_],
                           len(rows_))


def method_table(suite: Suite, specs: List[RunSpec]) -> tuple:
    """(header, rows, values) of the diffusion runs: final metrics as mean ± std over seeds, and
    ``values[label][key]``: the per-seed numbers (for the claims' spread).

    Keys: the final ``eval_*`` metrics; ``avg``/``fgt`` (accuracy after the last task, forgetting);
    CLoG's ``aiq_acc``/``afq_acc``/``fr_acc`` (sample accuracy per task) and ``aiq_fid``/``afq_fid``/
    ``fr_fid`` (per-task FID); ``fid0`` (FID after task 0); ``sps``/``nfe`` (tasks 1+); ``wall``."""
    from guided_diffusion.evaluation.class_metrics import clog_metrics

    times = read_csv(times_path(suite))
    cols = [("eval_fid", "FID ↓"), ("eval_kld", "KLD ↓"), ("eval_ard", "ARD ↓"), ("eval_class_acc", "class acc ↑")]
    extra = [("aiq_acc", "AIQ acc ↑"), ("fr_acc", "FR acc ↓"), ("aiq_fid", "AIQ FID ↓"), ("afq_fid", "AFQ FID ↓"),
             ("fr_fid", "FR FID ↓")]
    header = (["method", "seeds"] + [n for _, n in cols] + ["avg acc ↑", "forgetting ↓"] + [n for _, n in extra]
              + ["s/step", "teacher NFE/step", "wall min"])
    keys = [c for c, _ in cols] + ["avg", "fgt"] + [k for k, _ in extra] + ["afq_acc", "fid0", "sps", "nfe", "wall"]
    rows, values = [], {}
    n_tasks = _n_tasks(specs)
    for label in suite.methods:
        runs = [s for s in specs if s.kind == "continual" and s.label == label]
        per: Dict[str, List[Optional[float]]] = {k: [] for k in keys}
        done = 0
        for s in runs:
            rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
            if not rows_ or len(rows_) < n_tasks:  # not finished: left out, not mixed in
                continue
            done += 1
            last = rows_[-1]
            for c, _ in cols:
                per[c].append(as_number(last.get(c)))
            per["fid0"].append(as_number(rows_[0].get("eval_fid")))
            acc = _matrix_of(rows_, "eval_acc_task_")
            if acc is not None:
                q = clog_metrics(acc)
                per["avg"].append(q["afq"])
                per["fgt"].append(q["fr"])
                per["aiq_acc"].append(q["aiq"])
                per["afq_acc"].append(q["afq"])
                per["fr_acc"].append(q["fr"])
            fid = _matrix_of(rows_, "eval_fid_task_")
            if fid is not None:
                q = clog_metrics(fid, higher_is_better=False)
                per["aiq_fid"].append(q["aiq"])
                per["afq_fid"].append(q["afq"])
                per["fr_fid"].append(q["fr"])
            later = [x for x in rows_ if (as_number(x.get("task")) or 0) > 0] or rows_
            per["sps"].append(mean([as_number(x.get("sec_per_step")) for x in later]))
            per["nfe"].append(mean([as_number(x.get("final_teacher_nfe")) for x in later]))
            per["wall"].append((_wall(times, label, s.seed) or 0) / 60 or None)
        values[label] = {k: [v for v in vals if v is not None] for k, vals in per.items()}
        rows.append([label, f"{done}/{len(runs)}"] + [cell(per[c]) for c, _ in cols]
                    + [cell(per["avg"]), cell(per["fgt"])] + [cell(per[k]) for k, _ in extra]
                    + [cell(per["sps"]), cell(per["nfe"]), cell(per["wall"])])
    return header, rows, values


def solver_table(suite: Suite, specs: List[RunSpec]) -> tuple:
    """(header, rows, values) of the classifier runs; ``values[replay]["acc"|"fgt"]``: per-seed numbers."""
    header = ["replay", "seeds", "final avg acc ↑", "forgetting ↓", "replay label = previous classifier's argmax",
              "previous classifier's entropy on replay (nats)", "replay generation s", "wall min"]
    times = read_csv(times_path(suite))
    rows, values = [], {}
    n_tasks = _n_tasks(specs)
    for replay in suite.solver.get("replays", []) if suite.solver else []:
        runs = [s for s in specs if s.kind == "solver" and s.label == f"solver_{replay}"]
        acc, fgt, gen, wall, agree, ent = [], [], [], [], [], []
        for s in runs:
            rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
            if not rows_ or len(rows_) < n_tasks:  # not finished
                continue
            acc.append(as_number(rows_[-1].get("avg_acc")))
            fgt.append(as_number(rows_[-1].get("forgetting")))
            gen.append(sum(as_number(r.get("gen_sec")) or 0 for r in rows_))
            # how the classifier after task i-1 judges the replay, averaged over tasks 1.. (solver.replay_judgement)
            judged = [(as_number(r.get("replay_label_agree")), as_number(r.get("replay_old_entropy"))) for r in rows_
                      if (as_number(r.get("task")) or 0) > 0]
            if judged and all(a is not None for a, _ in judged):
                agree.append(float(np.mean([a for a, _ in judged])))
                ent.append(float(np.mean([e for _, e in judged])))
            wall.append((_wall(times, s.label, s.seed) or 0) / 60 or None)
        values[replay] = {"acc": [v for v in acc if v is not None], "fgt": [v for v in fgt if v is not None],
                          "agree": agree}
        rows.append([replay, f"{len(acc)}/{len(runs)}", cell(acc), cell(fgt), cell(agree), cell(ent), cell(gen),
                     cell(wall)])
    return header, rows, values


def _verdict(v: Optional[str]) -> str:
    return {"confirmed": "**confirmed**", "not confirmed": "**not confirmed**", "not resolved": "**not resolved**",
            None: "**not measured**"}[v]


def claims(m: Dict[str, Dict[str, List[float]]], s: Dict[str, Dict[str, List[float]]]) -> List[str]:
    """The papers' three claims, each judged by ``RULE`` against the spread over seeds."""
    def get(label, key):
        return (m.get(label) or {}).get(key) or []

    out = []
    # against the better of the two generative-replay variants (Masip's, the paper's own baseline, and GUIDE's)
    grs = [g for g in ("gr_masip", "gr_guide") if get(g, "eval_fid")] or ["gr_masip"]
    best = min(grs, key=lambda g: np.mean(get(g, "eval_fid")) if get(g, "eval_fid") else np.inf)
    gd, gr, joint = get("gd_full", "eval_fid"), get(best, "eval_fid"), get("joint", "eval_fid")
    gdk, grk = get("gd_full", "eval_kld"), get(best, "eval_kld")
    if not (gd and gr and gdk and grk):
        v = None
    else:
        v = all_better([compare(gd, gr, False), compare(gdk, grk, False)])
    gap = ""
    if gd and gr and joint and np.mean(gr) != np.mean(joint):
        gap = (f"; GD closes {100 * (np.mean(gr) - np.mean(gd)) / (np.mean(gr) - np.mean(joint)):.0f}% of the FID gap "
               "between generative replay and joint")
    out.append(f"1. *Generative distillation keeps the generator's quality far better than generative replay, close "
               f"to joint training* — final FID GD {mean_std(gd)} vs GR {mean_std(gr)} ({best}, the better generative replay"
               + "".join(f"; {g} {mean_std(get(g, 'eval_fid'))}" for g in grs if g != best)
               + f") vs joint {mean_std(joint)}; KLD GD {mean_std(gdk)} vs GR {mean_std(grk)}{gap}: {_verdict(v)} (GD better than GR "
               "on both FID and KLD by more than the spread).")
    dyn, full = get("gd_dynamic_cache", "eval_fid"), get("gd_full", "eval_fid")
    dn, fn = get("gd_dynamic_cache", "nfe"), get("gd_full", "nfe")
    ds, fs = get("gd_dynamic_cache", "sps"), get("gd_full", "sps")
    if not (dyn and full and dn and fn):
        v = None
    elif len(dyn) < 2 or len(full) < 2:
        v = "not resolved"
    else:
        # Equivalence: the cache's FID is no worse than full generation's by more than both 10% and the spread.
        spread = float(np.std(dyn, ddof=1) + np.std(full, ddof=1))
        excess = float(np.mean(dyn) - np.mean(full))
        fewer = float(np.mean(dn)) < float(np.mean(fn))
        v = "confirmed" if (excess <= max(0.1 * float(np.mean(full)), spread) and fewer) else "not confirmed"
    out.append(f"2. *Distillation from the dynamic cache matches full-generation distillation at a fraction of the "
               f"teacher cost* — final FID cache {mean_std(dyn)} vs full generation {mean_std(full)}; teacher NFEs per step "
               f"{mean_std(dn)} vs {mean_std(fn)}; seconds per step {mean_std(ds)} vs {mean_std(fs)}: {_verdict(v)} (the cache's FID "
               "no worse than full generation's by more than 10% or the spread, whichever is larger, with fewer "
               "teacher NFEs).")
    ga, pa = (s.get("guided") or {}).get("acc") or [], (s.get("plain") or {}).get("acc") or []
    v = None if not (ga and pa) else all_better([compare(ga, pa, True)])
    out.append(f"3. *Guided replay gives the classifier a higher final average accuracy than plain replay* — "
               f"guided {mean_std(ga)} vs plain {mean_std(pa)} (soft {mean_std((s.get('soft') or {}).get('acc') or [])}, joint "
               f"{mean_std((s.get('joint') or {}).get('acc') or [])}, none {mean_std((s.get('none') or {}).get('acc') or [])}): "
               f"{_verdict(v)}.")
    sa, ka = (s.get("soft") or {}).get("acc") or [], (s.get("soft_kd") or {}).get("acc") or []
    agree = (s.get("plain") or {}).get("agree") or []
    v = None if not (sa and pa) else {"better": "confirmed", "tie": "confirmed", "worse": "not confirmed",
                                      None: "not resolved"}[compare(sa, pa, True)]
    out.append(f"4. *Soft-target replay (Masip et al.'s loss) is at least as good as plain replay* — soft {mean_std(sa)} "
               f"vs plain {mean_std(pa)} (standard distillation, soft_kd: {mean_std(ka)}); the previous classifier's argmax "
               f"agrees with the replay's label on {mean_std(agree)} of the replayed images (plain runs, tasks 1-4): soft "
               f"targets carry the previous classifier's errors, where plain replay has the class-conditional "
               f"generator's label: {_verdict(v)} (not worse than plain by more than the spread).")
    return out


def convergence_check(m: Dict[str, Dict[str, List[float]]]) -> str:
    """Is task 0 trained? Its FID (shared by every method) within 1.5x of joint training's final FID."""
    first = next((m[label]["fid0"] for label in m if m[label].get("fid0")), [])
    joint = (m.get("joint") or {}).get("eval_fid") or []
    if not first or not joint:
        return "Task 0 against joint training: not measured."
    ratio = float(np.mean(first)) / float(np.mean(joint))
    return (f"Task 0 converged? FID after task 0 {mean_std(first)} vs joint training's final FID {mean_std(joint)}: ratio "
            f"{ratio:.2f} (at most 1.5 asked): {'yes' if ratio <= 1.5 else '**no**'}.")


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def write_report(suite: Suite, specs: List[RunSpec], command_line: str, wall_sec: Optional[float] = None) -> str:
    """Write ``<report_dir>/README.md`` (headline, claims, protocol) and the per-run report beside it."""
    from guided_diffusion.evaluation.report import build_report

    report_dir = _abs(suite.report_dir)
    os.makedirs(report_dir, exist_ok=True)
    restore_archived(suite, specs)  # a report on a new machine: the archived runs
    detail, _ = build_report(_abs(suite.out_dir), report_dir, f"{suite.name}: every run", copy_grids=True)
    mh, mr, mm = method_table(suite, specs)
    sh, sr, sm = solver_table(suite, specs)
    times = read_csv(times_path(suite))
    total = sum(as_number(r["seconds"]) or 0 for r in times)
    commit = _git("rev-parse", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    import torch

    with open(_abs(suite.base)) as f:
        base_text = f.read()
    lines = [
        f"# Fidelity benchmark: {suite.name}{f' (scale {suite.scale})' if suite.scale else ''}", "",
        suite.description.strip(), "",
        f"- command: `{command_line}`",
        f"- commit: `{commit}`{dirty}; the runs ran at {_commits_of(times)}",
        *_archive_line(suite, specs),
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; "
        + ("" if wall_sec is None else f"wall clock of the suite command: {wall_sec / 60:.1f} min; ")
        + f"sum of the runs' process times: {total / 60:.1f} min",
        *_features_line(specs),
        f"- seeds: {', '.join(map(str, suite.seeds))}; base config `{suite.base}` with `{suite.path}`'s settings "
        f"(every run's resolved config is in `{os.path.relpath(os.path.join(_abs(suite.out_dir), 'configs'), ROOT)}`)",
        "",
        "## Generator (continual diffusion model), after the last task", "",
        "FID: domain-classifier features (the offline metric of this project), generated samples against the test "
        "images of all seen classes; KLD/ARD: class histogram of the samples (evaluation classifier) against the "
        "true one; class acc: the evaluation classifier's accuracy on class-conditional samples; avg acc / "
        "forgetting: the same accuracy per task over the task sequence. s/step and teacher NFE/step: tasks 1+ "
        "(where the methods differ). CLoG's metrics (Zhang et al. 2024) from the quality of each task's classes "
        "after each task: AIQ (average incremental quality: the mean over tasks t of the mean quality of tasks "
        "0..t after task t), AFQ (average final quality, after the last task; for accuracy it is avg acc) and FR "
        "(forgetting rate: how far each old task fell from its best, on average), for the sample accuracy and for "
        "the per-task FID (task j's samples against task j's test images). Mean ± std over seeds.", "",
        md_table(mh, mr), "", convergence_check(mm), "",
    ]
    curve = next((sp for sp in specs if sp.kind == "curve"), None)
    if curve is not None and os.path.isfile(os.path.join(curve.run_dir, "curve.csv")):
        from .curves import curve_table, plot_curves

        plots = os.path.join(report_dir, "report_plots")
        os.makedirs(plots, exist_ok=True)
        plot_curves([curve.run_dir], os.path.join(plots, "curve_task0.png"),
                    title="task 0's classes, IID: the learning curve of the suite's model")
        lines += ["## Task 0's learning curve", "",
                  "The suite's model trained IID on task 0's classes (`scripts/learning_curve.py`, the same "
                  "evaluation), evaluated as the images seen double: where more training stops paying. "
                  f"Task 0 of every run trains for {_task0_images(suite)} images.", "",
                  "![task 0 learning curve](report_plots/curve_task0.png)", "", curve_table([curve.run_dir]), ""]
    if sr:
        lines += ["## Classifier (solver) with replay from the generator", "",
                  f"The classifier learns task after task; replay comes from the `{suite.solver['diffusion']}` "
                  "generator of the previous task (`none`: fine-tuning, `joint`: all real data so far).", "",
                  md_table(sh, sr), ""]
    lines += ["## The papers' claims, checked", "", f"Rule: {RULE}.", ""] + claims(mm, sm) + [""]
    lines += ["## Details", "", f"Per-run tables, metric-vs-task plots and every sample grid: "
              f"[{os.path.basename(detail)}]({os.path.basename(detail)}) "
              f"([HTML](report.html)).", "", "## Base config", "", "```yaml", base_text.strip(), "```", "",
              "## Suite", "", "```yaml", open(suite.path).read().strip(), "```", ""]
    path = os.path.join(report_dir, "README.md")
    from guided_diffusion.runtime.checkpoint import atomic_write_text

    atomic_write_text(path, "\n".join(lines))
    return path


_FEATURES = re.compile(r"[\w-]+\([^()]*test acc [^()]*\)")


def features_of(rows_: List[Dict[str, str]]) -> str:
    """The evaluation features a run's ``metrics.csv`` was measured with: its ``eval_features``, or
    (runs from before that column) the extractor named in ``eval_protocol``; "" when unrecorded."""
    for r in rows_:
        if r.get("eval_features"):
            return r["eval_features"]
        m = _FEATURES.search(r.get("eval_protocol") or "")
        if m:
            return m.group(0)
    return ""


def _features_line(specs: List[RunSpec]) -> List[str]:
    """A line naming the evaluation classifier(s) the diffusion runs were measured with: FIDs under two
    classifiers do not compare exactly, so a suite measured with more than one says so, with the runs
    of each and the real-data floor after task 0 under each."""
    by: Dict[str, List[str]] = {}
    floor: Dict[str, List[float]] = {}
    for s in specs:
        if s.kind != "continual":
            continue
        rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
        if not rows_:
            continue
        f = features_of(rows_) or "unrecorded (recovered from an earlier report)"
        by.setdefault(f, []).append(f"{s.label} s{s.seed}")
        v = as_number(rows_[0].get("eval_fid_real"))
        if v is not None:
            floor.setdefault(f, []).append(v)
    if len(by) <= 1:
        return [f"- evaluation features: {next(iter(by))}"] if by else []
    parts = [f"`{f}` ({len(runs)} runs" + (f"; real-data floor after task 0 {mean_std(floor[f])}" if f in floor else "")
             + "): " + ", ".join(runs) for f, runs in sorted(by.items(), key=lambda kv: -len(kv[1]))]
    return ["- evaluation features: **more than one evaluation classifier** measured these runs (it was trained "
            "anew on each machine before it shipped in `model/`); FIDs under two classifiers agree only to within "
            "the difference of their real-data floors (the floor, the same real images under each classifier, also tells an "
            "unrecorded one apart): " + "; ".join(parts)]


def _archive_line(suite: Suite, specs: List[RunSpec]) -> List[str]:
    """A line on the runs whose results come from the archive (run on earlier machines), and on those
    recovered from an earlier report rather than archived when they finished (their ``source``)."""
    records = [(s, run_archive.info(_abs(suite.archive_dir), _abs(suite.out_dir), s.run_dir)) for s in specs
               if not run_archive.has_checkpoints(s.run_dir)]
    records = [(s, r) for s, r in records if r is not None]
    if not records:
        return []
    recovered = [(s, r) for s, r in records if r.get("source")]
    line = (f"- archive: {len(records)} run(s) ran on earlier machines; their results are read from "
            f"`{os.path.relpath(_abs(suite.archive_dir), ROOT)}`")
    if recovered:
        line += (f"; {len(recovered)} of them ({', '.join(f'{s.label} s{s.seed}' for s, _ in recovered)}) were "
                 f"{recovered[0][1]['source']}")
    return [line]


def _task0_images(suite: Suite) -> str:
    """Images seen by task 0 in the suite's runs (first_task_num_steps x batch), from the base + settings."""
    cfg = _merge(_read(suite.base), suite.settings)
    c, t = cfg.get("continual", {}), cfg.get("train", {})
    steps = c.get("first_task_num_steps", -1)
    steps = c.get("num_steps", 500) if steps in (-1, None) else steps
    return f"{int(steps) * int(t.get('batch_size', 64)):,} ({steps} steps of {t.get('batch_size', 64)})"


def _commits_of(times: List[Dict[str, str]]) -> str:
    """Which commits the suite's runs ran at (``suite_times.csv``), with how many runs each."""
    counts: Dict[str, int] = {}
    for r in times:
        c = (r.get("commit") or "").strip() or "an unrecorded commit"
        counts[c] = counts.get(c, 0) + 1
    return ", ".join((c if c.startswith("an ") else f"`{c}`") + f" ({n} run{'s' if n != 1 else ''})"
                     for c, n in counts.items()) or "no recorded run"


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


__all__ = ["Suite", "RunSpec", "SuiteRunError", "load_suite", "plan", "run_suite", "write_report", "claims",
           "method_table", "solver_table", "convergence_check"]
