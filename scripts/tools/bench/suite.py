"""A benchmark suite: its YAML file, read and checked (``load_suite``).

A *suite* (``yaml/bench/split_mnist.yaml``)::

    name: split_mnist
    out_dir: experiments/bench_split_mnist        # the run folders (<label>_s<seed>/)
    report_dir: experiments/results/split_mnist   # the report (Markdown + HTML + PNGs, small)
    archive_dir: experiments/results/split_mnist/runs   # finished runs' results (default: <report_dir>/runs)
    base: yaml/mnist/generative_distillation_eval.yaml   # every run: this config ...
    settings: {continual: {num_steps: 100}}      # ... with these keys merged in (nested YAML)
    seeds: [0, 1, 2]
    share_first_task: true   # task 0 is the same for every method: train it once per seed
    learning_curve: {classes: [0, 1], points: "4k:64k", num_samples: 500}   # task 0's curve (optional)
    methods:                 # label -> the run's ``method:`` section
      naive: {name: naive}
      gd_full: {name: generative_distillation, source: full_generation}
      ewc: yaml/mnist/ewc.yaml            # or a config file: its method section
      ewc_buffer_replay: [*ewc, *buffer_replay]   # or a list: the methods applied together (continual.compose);
                                          # YAML aliases of other rows' sections (&ewc) give them the same settings
      vae_gr: {name: generative_replay, settings: {generator: vae, ...}}  # a row's own settings: its own task 0
    solver:                  # the continual classifier, replaying from one method's diffusion runs
      diffusion: gd_full
      replays: [none, joint, plain, soft, soft_kd, guided]
      settings: {solver: {num_steps: 100}}
    papers: [yaml/bench/split_mnist_masip.yaml]   # suites in the papers' own protocols, whose tables and
                             # claims the report shows beside this suite's (each runs on its own)
    ablations:               # another script's results shown in that section (its README's table and verdicts)
      - {title: ..., results: experiments/results/dkdm_mnist, command: ..., source: ..., note: ...}
    claims:                  # the claims checked against the rows (``claims.py``: the format)
      - {id: ..., statement: ..., source: ..., table: generator, row: gd_full, against: ..., metrics: ..., ...}
    protocols:               # the protocols claims are tested in, beside this project's (optional)
      NAME: {title: ..., description: ...}
    scales:                  # --scale NAME: these suite keys replace the ones above (whole keys)
      paper: {base: yaml/fmnist/generative_distillation.yaml, methods: {...}, ...}

Paths are relative to the repository's root. The configs of the runs are built and checked by
``plan.plan_runs``; the claims are checked here, when the suite is read.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import yaml
from guided_diffusion.runtime.config import ConfigError, merge_trees, read_tree

from .claims import Claim, parse_claims
from .repo import abs_path

SUITE_KEYS = ("name", "out_dir", "report_dir", "archive_dir", "base", "settings", "seeds", "share_first_task", "methods",
              "solver", "scales", "description", "learning_curve", "claims", "protocols", "papers", "ablations")
ABLATION_KEYS = ("title", "results", "command", "source", "note")
CURVE_KEYS = ("classes", "points", "num_samples")
SOLVER_KEYS = ("diffusion", "replays", "settings")
PROTOCOL_KEYS = ("title", "description")


@dataclass
class Suite:
    name: str
    base: str
    methods: Dict[str, Dict[str, Any]]
    out_dir: str = "experiments/bench"
    report_dir: str = ""
    archive_dir: str = ""  # finished runs' results, committed (archive.py); default <report_dir>/runs
    settings: Dict[str, Any] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [0])
    share_first_task: bool = True
    solver: Dict[str, Any] = field(default_factory=dict)
    learning_curve: Dict[str, Any] = field(default_factory=dict)  # task 0's learning curve (CURVE_KEYS)
    claims: List[Claim] = field(default_factory=list)
    protocols: Dict[str, Dict[str, str]] = field(default_factory=dict)  # name -> title, description
    papers: List[str] = field(default_factory=list)  # suite files in the papers' protocols, reported beside this one
    ablations: List[Dict[str, str]] = field(default_factory=list)  # other scripts' results folders (ABLATION_KEYS)
    description: str = ""
    path: str = ""
    scale: str = ""


def merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """``a`` with ``b`` merged in: the configs' one merge (``config.merge_trees``), on copies."""
    return merge_trees(copy.deepcopy(a), copy.deepcopy(b or {}))


def read_config(path: str) -> Dict[str, Any]:
    """A config file as the loader reads it (its ``base`` files merged in)."""
    return read_tree(abs_path(path))


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
    protocols = raw.pop("protocols", None) or {}
    for name, p in protocols.items():
        if not isinstance(p, dict) or [k for k in p if k not in PROTOCOL_KEYS]:
            raise ConfigError(f"{path}: protocol {name}: a mapping of {', '.join(PROTOCOL_KEYS)}")
    claims = parse_claims(raw.pop("claims", None), path, list(protocols))
    suite = Suite(**raw, claims=claims, protocols=protocols, path=path, scale=scale)
    if suite.solver:
        bad = [k for k in suite.solver if k not in SOLVER_KEYS]
        if bad:
            raise ConfigError(f"{path}: unknown solver key(s) {bad}; valid: {', '.join(SOLVER_KEYS)}")
        if suite.solver.get("diffusion") not in suite.methods:
            raise ConfigError(f"{path}: solver.diffusion {suite.solver.get('diffusion')!r} is not one of the methods "
                              f"({', '.join(suite.methods)})")
    if suite.learning_curve:
        bad = [k for k in suite.learning_curve if k not in CURVE_KEYS]
        if bad:
            raise ConfigError(f"{path}: unknown learning_curve key(s) {bad}; valid: {', '.join(CURVE_KEYS)}")
    for paper in suite.papers:
        if not os.path.isfile(abs_path(paper)):
            raise ConfigError(f"{path}: papers: suite file {paper} not found")
    for i, ab in enumerate(suite.ablations):
        bad = [k for k in ab if k not in ABLATION_KEYS] if isinstance(ab, dict) else ["(not a mapping)"]
        if bad or not ab.get("title") or not ab.get("results"):
            raise ConfigError(f"{path}: ablations[{i}]: give title and results (a results folder with README.md), "
                              f"optionally command, source and note; unknown: {bad}")
    if not suite.report_dir:
        suite.report_dir = os.path.join(suite.out_dir, "report")
    if not suite.archive_dir:
        suite.archive_dir = os.path.join(suite.report_dir, "runs")
    return suite


def row_settings(entry) -> Dict[str, Any]:
    """A method entry's own config settings (its ``settings`` key: e.g. another generator), merged over the
    suite's; a row with its own settings trains its own task 0 (it is not the shared one)."""
    return copy.deepcopy(entry.get("settings") or {}) if isinstance(entry, dict) else {}


def method_section(entry):
    """A suite's method entry: the ``method:`` mapping itself (without its ``settings``), a list of methods
    applied together (names or mappings, as a config's ``method:`` list), or a config file whose section is
    taken."""
    if isinstance(entry, list):
        return copy.deepcopy(entry)
    if isinstance(entry, dict):
        return {k: v for k, v in copy.deepcopy(entry).items() if k != "settings"}
    if not os.path.isfile(abs_path(str(entry))):
        raise ConfigError(f"method entry {entry!r}: neither a method section nor a config file")
    return read_config(str(entry)).get("method") or {"name": "naive"}


def task0_images(suite: Suite) -> str:
    """Images seen by task 0 in the suite's runs (first_task_num_steps x batch), from the base + settings."""
    cfg = merge(read_config(suite.base), suite.settings)
    c, t = cfg.get("continual", {}), cfg.get("train", {})
    steps = c.get("first_task_num_steps", -1)
    steps = c.get("num_steps", 500) if steps in (-1, None) else steps
    return f"{int(steps) * int(t.get('batch_size', 64)):,} ({steps} steps of {t.get('batch_size', 64)})"


__all__ = ["Suite", "SUITE_KEYS", "CURVE_KEYS", "load_suite", "merge", "read_config", "row_settings",
           "method_section", "task0_images"]
