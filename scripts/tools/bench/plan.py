"""Which runs a suite makes, in what order, and what each needs first (``plan_runs``).

Each run is one process of ``scripts/image_train.py`` (or ``classifier_cl_train.py``, or
``learning_curve.py``) on a config written to ``<out_dir>/configs/``; every config is built and
validated before the first run starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import yaml
from guided_diffusion.runtime.config import ConfigError, load_config, read_tree

from .archive import holds_task0, is_archived
from .repo import abs_path
from .suite import Suite, merge, method_section, read_config, row_settings


@dataclass
class RunSpec:
    label: str  # the method's label in the suite
    seed: int
    kind: str  # continual | solver | curve
    config_path: str
    run_dir: str
    overrides: List[str] = field(default_factory=list)
    needs: Optional[str] = None  # label of the run (same seed) that must finish first


def _write_config(cfg, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def plan_runs(suite: Suite) -> List[RunSpec]:
    """Write every run's config (``<out_dir>/configs/``) and check it; returns the runs in order.

    Per seed: the methods in the suite's order (with ``share_first_task``, the first one trains task
    0 and the others take it, ``continual.init_from``), then the solver runs. A method run archived
    on another machine (no checkpoints here) cannot give its task 0: the first run that can (it
    holds its task 0, or it will run) trains it instead. A method that adapts the network (LoRA, the
    ensemble) takes the shared task 0 (converted, ``warm_start``) but never gives it: its checkpoints are
    not the plain network's."""
    import guided_diffusion.continual.methods  # noqa: F401  (the methods' config schemas, to check the configs)
    import guided_diffusion.evaluation  # noqa: F401  (the evaluation section's schema)
    from guided_diffusion.continual.methods import adapts_model

    base = read_config(suite.base)
    out_dir = abs_path(suite.out_dir)
    cfg_dir = os.path.join(out_dir, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    specs: List[RunSpec] = []
    if suite.learning_curve:
        # Task 0's learning curve: IID training on its classes with the suite's model and evaluation.
        lc = suite.learning_curve
        cfg = merge(base, suite.settings)
        cfg.update(name="curve_task0", seed=int(suite.seeds[0]), out_dir=out_dir)
        cfg.pop("method", None)
        path = os.path.join(cfg_dir, "curve_task0.yaml")
        _write_config(cfg, path)
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
            cfg = merge(merge(base, suite.settings), own)
            cfg.update(name=name, seed=int(seed), out_dir=out_dir, method=method_section(method))
            shares = suite.share_first_task and first_run is not None and not own
            if shares:
                cfg = merge(cfg, {"continual": {"init_from": first_run}})
            path = os.path.join(cfg_dir, f"{name}.yaml")
            _write_config(cfg, path)
            try:
                adapts = adapts_model(load_config(path).method)  # every run's config is valid before anything runs
            except ConfigError as e:
                raise ConfigError(f"suite {suite.path}, method {label}: {e}") from None
            run_dir = os.path.join(out_dir, name)
            needs = first_label if shares else None
            specs.append(RunSpec(label, int(seed), "continual", path, run_dir, needs=needs))
            if first_run is None and not own and not adapts and (holds_task0(run_dir)
                                                                 or not is_archived(suite, run_dir)):
                first_run, first_label = run_dir, label
        if suite.solver:
            src = next(s for s in specs if s.seed == seed and s.label == suite.solver["diffusion"])
            cfg = merge(read_tree(src.config_path), suite.solver.get("settings", {}))
            path = os.path.join(cfg_dir, f"solver_s{seed}.yaml")
            _write_config(cfg, path)
            for replay in suite.solver.get("replays", ["guided"]):
                try:
                    load_config(path, [f"solver.replay={replay}"])
                except ConfigError as e:
                    raise ConfigError(f"suite {suite.path}, solver {replay}: {e}") from None
                specs.append(RunSpec(f"solver_{replay}", int(seed), "solver", path,
                                     os.path.join(src.run_dir, f"solver_{replay}"), [f"solver.replay={replay}"],
                                     needs=src.label))
    return specs


__all__ = ["RunSpec", "plan_runs"]
