"""The benchmark's headline tables from the runs' ``metrics.csv``: the generator's (a row per method)
and the classifier's (a row per replay), as mean ± std over the finished seeds, with the per-seed
numbers (``values``) that the claims are judged on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np

from guided_diffusion.evaluation.report import as_number
from guided_diffusion.evaluation.seeds import cell, mean, mean_std
from guided_diffusion.runtime.logger import read_csv

from .archive import times_path

if TYPE_CHECKING:
    from .plan import RunSpec
    from .suite import Suite

# The generator table's columns (key, heading): final metrics, then CLoG's.
GENERATOR_COLUMNS = [("eval_fid", "FID ↓"), ("eval_kld", "KLD ↓"), ("eval_ard", "ARD ↓"),
                     ("eval_class_acc", "class acc ↑")]
CLOG_COLUMNS = [("aiq_acc", "AIQ acc ↑"), ("fr_acc", "FR acc ↓"), ("aiq_fid", "AIQ FID ↓"),
                ("afq_fid", "AFQ FID ↓"), ("fr_fid", "FR FID ↓")]
# The keys of ``method_table``'s values (what a claim on the generator table can name).
GENERATOR_KEYS = tuple([c for c, _ in GENERATOR_COLUMNS] + ["avg", "fgt"] + [k for k, _ in CLOG_COLUMNS]
                       + ["afq_acc", "fid0", "floor", "sps", "extra_params", "extra_state", "nfe", "nfe_all", "wall"])
# The keys of ``solver_table``'s values: final average accuracy, forgetting, replay label = previous argmax.
CLASSIFIER_KEYS = ("acc", "fgt", "agree")


def n_tasks(specs: List["RunSpec"]) -> int:
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


def prep_nfe(run_dir: str, rows_: List[Dict[str, str]]) -> List[float]:
    """Per task, the teacher NFEs paid once before it (a DKDM cache's preparation): ``metrics.csv``'s
    ``prep_teacher_nfe``, or, for runs from before that column, the same count computed from the run's
    config (the cache's size, chain and seed fix it); zeros for methods without such a cost."""
    have = [as_number(r.get("prep_teacher_nfe")) for r in rows_]
    if all(v is not None for v in have):
        return [float(v) for v in have]
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return [0.0] * len(rows_)
    import guided_diffusion.continual.methods  # noqa: F401  (the method section's schemas)
    import guided_diffusion.dkdm.config  # noqa: F401  (the dkdm section's)
    import guided_diffusion.evaluation.settings  # noqa: F401  (the evaluation section's)
    from guided_diffusion.runtime.config import load_config

    cfg = load_config(path, record=True)  # the run's saved config
    m = cfg.method
    if getattr(m, "name", "") != "dynamic_distillation":
        return [0.0] * len(rows_)
    from guided_diffusion.dkdm.prepare import CacheSpec, cache_nfe, cache_size
    from guided_diffusion.experiment import build_diffusion
    from guided_diffusion.runtime.seeding import step_seed

    T = build_diffusion(cfg, m.cache_sampler).num_timesteps
    n = cache_size(m.mode, m.rho, T, m.replay_batch or cfg.train.batch_size)
    return [0.0 if int(as_number(r["task"]) or 0) == 0 else float(cache_nfe(CacheSpec(
        n, T, (1, 1, 1), m.mode, None, seed=step_seed(cfg.seed, int(as_number(r["task"])), 0xDC) % (2**31),
        shard_size=m.shard_size))) for r in rows_]


def fixed_cell(values: List[Optional[float]]) -> str:
    """A cost that the seeds share (a method's extra parameters or memory): the value alone when they
    agree, else ``cell``'s mean ± std."""
    vals = [v for v in values if v is not None]
    return f"{vals[0]:.3g}" if vals and all(v == vals[0] for v in vals) else cell(vals)


def method_table(suite: "Suite", specs: List["RunSpec"]) -> tuple:
    """(header, rows, values) of the diffusion runs: final metrics as mean ± std over seeds, and
    ``values[label][key]``: the per-seed numbers (for the claims' spread).

    Keys (``GENERATOR_KEYS``): the final ``eval_*`` metrics; ``avg``/``fgt`` (accuracy after the last
    task, forgetting); CLoG's ``aiq_acc``/``afq_acc``/``fr_acc`` (sample accuracy per task) and
    ``aiq_fid``/``afq_fid``/``fr_fid`` (per-task FID); ``fid0`` (FID after task 0); ``floor`` (the final real-data FID floor); ``sps``/``nfe``
    (tasks 1+); ``extra_params`` (millions of parameters beyond the network's: LoRA's adapters, the
    ensemble's other members; 0 when the run reports none) and ``extra_state`` (millions of numbers the
    method keeps after the last task, ``extra_state_M``: anchors, importances, a teacher, stored images);
    ``nfe_all`` (tasks 1+: the teacher NFEs per step with what was paid once a task, a
    cache's preparation, spread over its steps); ``wall``."""
    from guided_diffusion.evaluation.class_metrics import clog_metrics

    times = read_csv(times_path(suite))
    cols, extra = GENERATOR_COLUMNS, CLOG_COLUMNS
    header = (["method", "seeds"] + [n for _, n in cols] + ["avg acc ↑", "forgetting ↓"] + [n for _, n in extra]
              + ["s/step", "extra params M", "extra state M", "teacher NFE/step", "with preparation", "wall min"])
    rows, values = [], {}
    tasks = n_tasks(specs)
    for label in suite.methods:
        runs = [s for s in specs if s.kind == "continual" and s.label == label]
        per: Dict[str, List[Optional[float]]] = {k: [] for k in GENERATOR_KEYS}
        done = 0
        for s in runs:
            rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
            if not rows_ or len(rows_) < tasks:  # not finished: left out, not mixed in
                continue
            done += 1
            last = rows_[-1]
            for c, _ in cols:
                per[c].append(as_number(last.get(c)))
            per["fid0"].append(as_number(rows_[0].get("eval_fid")))
            per["floor"].append(as_number(last.get("eval_fid_real")))
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
            per["extra_params"].append((as_number(last.get("extra_params")) or 0.0) / 1e6)
            per["extra_state"].append(as_number(last.get("extra_state_M")))
            per["nfe"].append(mean([as_number(x.get("final_teacher_nfe")) for x in later]))
            prep = dict(zip([id(x) for x in rows_], prep_nfe(s.run_dir, rows_)))
            per["nfe_all"].append(mean([(as_number(x.get("final_teacher_nfe")) or 0.0)
                                        + prep[id(x)] / max(1.0, as_number(x.get("steps")) or 1.0) for x in later]))
            per["wall"].append((_wall(times, label, s.seed) or 0) / 60 or None)
        values[label] = {k: [v for v in vals if v is not None] for k, vals in per.items()}
        rows.append([label, f"{done}/{len(runs)}"] + [cell(per[c]) for c, _ in cols]
                    + [cell(per["avg"]), cell(per["fgt"])] + [cell(per[k]) for k, _ in extra]
                    + [cell(per["sps"]), fixed_cell(per["extra_params"]), fixed_cell(per["extra_state"]),
                       cell(per["nfe"]), cell(per["nfe_all"]), cell(per["wall"])])
    return header, rows, values


def solver_table(suite: "Suite", specs: List["RunSpec"]) -> tuple:
    """(header, rows, values) of the classifier runs; ``values[replay][key]`` (``CLASSIFIER_KEYS``:
    ``acc``, ``fgt``, ``agree``): per-seed numbers."""
    header = ["replay", "seeds", "final avg acc ↑", "forgetting ↓", "replay label = previous classifier's argmax",
              "previous classifier's entropy on replay (nats)", "replay generation s", "wall min"]
    times = read_csv(times_path(suite))
    rows, values = [], {}
    tasks = n_tasks(specs)
    for replay in suite.solver.get("replays", []) if suite.solver else []:
        runs = [s for s in specs if s.kind == "solver" and s.label == f"solver_{replay}"]
        acc, fgt, gen, wall, agree, ent = [], [], [], [], [], []
        for s in runs:
            rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
            if not rows_ or len(rows_) < tasks:  # not finished
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


def convergence_check(m: Dict[str, Dict[str, List[float]]]) -> str:
    """Is task 0 trained? Its FID (shared by every method) within 1.5x of joint training's final FID;
    and is joint training itself trained? Its final FID within 1.5x of the real-data floor, else the
    first check compares task 0 with an under-trained reference and says little."""
    first = next((m[label]["fid0"] for label in m if m[label].get("fid0")), [])
    joint = (m.get("joint") or {}).get("eval_fid") or []
    if not first or not joint:
        return "Task 0 against joint training: not measured."
    ratio = float(np.mean(first)) / float(np.mean(joint))
    out = (f"Task 0 converged? FID after task 0 {mean_std(first)} vs joint training's final FID {mean_std(joint)}: ratio "
           f"{ratio:.2f} (at most 1.5 asked): {'yes' if ratio <= 1.5 else '**no**'}.")
    floor = (m.get("joint") or {}).get("floor") or []
    if floor:
        r = float(np.mean(joint)) / float(np.mean(floor))
        out += (f" Joint training trained? Its final FID vs the real-data floor {mean_std(floor)}: ratio {r:.2f} "
                f"(at most 1.5 asked): " + ("yes." if r <= 1.5 else "**no**: the later tasks' budget leaves joint "
                                            "training under-trained, so the check above compares task 0 with an "
                                            "under-trained reference and says little."))
    return out


__all__ = ["GENERATOR_COLUMNS", "CLOG_COLUMNS", "GENERATOR_KEYS", "CLASSIFIER_KEYS", "n_tasks", "method_table",
           "solver_table", "convergence_check"]
