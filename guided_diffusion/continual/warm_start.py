"""Start a continual run from another run's finished first task (``continual.init_from``).

Task 0 has no old classes: every method trains it the same way (the plain diffusion loss on the
first classes), so runs that differ only in their method share it bit for bit. A benchmark that
compares methods trains it once and seeds every other run with it: ``copy_first_task`` copies the
final checkpoint of ``<init_from>/task_0`` (model, EMA, optimizer, loop state, manifest last, each
file checked against the manifest's size and sha256) and its progress logs into this run's
``task_0``, where the training loop then finds the task complete. The method's ``after_task``
(EWC's Fisher, the buffer, ...) still runs in this run. The grid and the evaluation of task 0 are
taken from the source too (``first_task_results``) when they were made with the same sampling,
grid and evaluation settings: the same EMA weights and seeds give the same images and numbers.

The source must have been made with the same data, model, diffusion, training settings, seed and
first task; otherwise one ``ConfigError`` names every differing key.

A method that adapts the network (LoRA's adapters, the ensemble's members) takes a plain network's task 0:
the copied weights and EMA are converted to the adapted network by the method's ``import_weights``
(``copy_first_task``'s ``convert``), and the manifest lists the converted files. The reverse is refused:
an adapted run's task 0 seeds only a run of the same method section.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import blobfile as bf

from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError, load_config, to_dict
from ..runtime.logger import read_csv
from .scenario import build_scenario

# Keys that do not change what task 0 computes (logging, checkpoint cadence, threads, sinks).
NEUTRAL_TRAIN_KEYS = ("log_interval", "save_interval", "keep_checkpoints", "num_threads", "wandb", "tensorboard",
                      "total_steps", "sample_at_end")


def _first_task_settings(cfg) -> Dict[str, Any]:
    """Everything that decides the weights after task 0, flattened to ``section.key``."""
    out: Dict[str, Any] = {"seed": cfg.seed}
    for section in ("data", "model", "diffusion", "train"):
        for key, value in to_dict(getattr(cfg, section)).items():
            if section == "train" and key in NEUTRAL_TRAIN_KEYS:
                continue
            out[f"{section}.{key}"] = value
    return out


def _differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    return [f"{k}: {b.get(k)!r} there, {a.get(k)!r} here" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def first_task_source(cfg, task, info) -> int:
    """Check that ``cfg.continual.init_from`` holds a finished task 0 that this run would have trained
    itself; returns the step of its final checkpoint. Read-only (every rank may call it)."""
    src_run = cfg.continual.init_from
    src = f"{src_run}/task_0"
    if not bf.exists(f"{src}/task_done.json") or not bf.exists(f"{src_run}/config.yaml"):
        raise ConfigError(f"continual.init_from = {src_run!r}: {src} is not a finished first task of a continual run "
                          "(run that config first)")
    other = load_config(f"{src_run}/config.yaml", record=True)  # that run's saved config
    from .methods import adapts_model, method_names

    if adapts_model(other.method) and other.method != cfg.method:
        raise ConfigError(f"continual.init_from = {src_run!r}: its method ({'+'.join(method_names(other.method))}) "
                          "adapts the network, so its task 0 is not a plain network's; take task 0 from a run of a "
                          "method that does not (naive, ewc, ...) or of the same method section")
    diffs = _differences(_first_task_settings(cfg), _first_task_settings(other))
    theirs = build_scenario(other.continual, info.num_classes, info.task_classes).tasks[0]
    if (tuple(theirs.classes), theirs.num_steps) != (tuple(task.classes), task.num_steps):
        diffs.append(f"task 0: classes {list(theirs.classes)} x {theirs.num_steps} steps there, "
                     f"{list(task.classes)} x {task.num_steps} steps here")
    if diffs:
        raise ConfigError(f"continual.init_from = {src_run!r} trained another first task; it differs in "
                          + "; ".join(diffs))
    if ckpt.latest_checkpoint(src) != task.num_steps:
        raise ConfigError(f"continual.init_from: {src} has no intact checkpoint at its last step {task.num_steps}")
    return task.num_steps


def copy_first_task(src_run: str, step: int, task_dir: str, log,
                    convert: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> bool:
    """Copy ``src_run``'s task 0 checkpoint at ``step`` and its progress logs into ``task_dir`` (rank 0,
    before task 0's training loop). Returns False when ``task_dir`` already has a checkpoint (resume).
    ``convert``: a state_dict of the source's network as one of this run's (adapted) network, applied to
    the weights and EMA files; the manifest then lists the converted files."""
    if ckpt.list_manifests(task_dir):
        return False
    src = f"{src_run}/task_0"
    bf.makedirs(task_dir)
    for name in ("progress.csv", "progress.jsonl"):
        if bf.exists(f"{src}/{name}"):
            ckpt.atomic_write_bytes(f"{task_dir}/{name}", ckpt.read_bytes(f"{src}/{name}"))
    manifest = ckpt.read_manifest(src, step)
    for name, entry in manifest["files"].items():
        ckpt.atomic_write_bytes(f"{task_dir}/{name}", ckpt.read_bytes(f"{src}/{name}"))
        reason = ckpt.verify_file(f"{task_dir}/{name}", entry)
        if reason is not None:
            raise ckpt.CheckpointError(f"copying task 0 from {src}: {reason}")
        if convert is not None and name.startswith(("model", "ema_")):
            path = f"{task_dir}/{name}"
            manifest["files"][name] = ckpt.atomic_torch_save(convert(ckpt.load_torch(path)), path)
    # The manifest goes last: until it exists the copy is not a checkpoint (an interrupted copy is redone).
    if convert is None:
        ckpt.atomic_write_bytes(ckpt.manifest_path(task_dir, step), ckpt.read_bytes(ckpt.manifest_path(src, step)))
    else:
        ckpt.atomic_write_text(ckpt.manifest_path(task_dir, step), json.dumps(manifest, indent=2, sort_keys=True))
    log(f"task 0 taken from {os.path.abspath(src)} (step {step}: same data, model, diffusion, training and first task)")
    return True


def _results_settings(cfg) -> Dict[str, Any]:
    """Everything besides the weights that decides task 0's grid and evaluation."""
    out: Dict[str, Any] = {}
    for section in ("sample", "evaluation"):
        if hasattr(cfg, section):
            out.update({f"{section}.{k}": v for k, v in to_dict(getattr(cfg, section)).items()})
    for key in ("grid_per_class", "eval_sampler"):
        out[f"continual.{key}"] = getattr(cfg.continual, key)
    return out


def first_task_results(cfg, src_run: str) -> Optional[Tuple[Dict[str, str], Optional[str]]]:
    """Task 0's evaluation columns (``eval_*``) and grid path in ``src_run``, when that run made them
    with this run's settings (``None`` otherwise: this run computes its own). ``eval_sec`` is 0, as
    ``train_sec`` is: this run spent nothing on them."""
    try:
        other = load_config(f"{src_run}/config.yaml", record=True)  # that run's saved config
    except (ConfigError, OSError):
        return None
    if _differences(_results_settings(cfg), _results_settings(other)):
        return None
    row = next((r for r in read_csv(f"{src_run}/metrics.csv") if r.get("task") == "0"), None)
    if row is None:
        return None
    grid = f"{src_run}/task_0/samples.png"
    if cfg.continual.grid_per_class > 0 and not bf.exists(grid):
        return None
    cols = {k: v for k, v in row.items() if k and k.startswith("eval_") and v not in ("", None)}
    if cfg.evaluation.enabled and not cols:
        return None
    if "eval_sec" in cols:
        cols["eval_sec"] = "0.0"
    return cols, grid if cfg.continual.grid_per_class > 0 else None
