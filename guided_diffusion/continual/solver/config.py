"""The ``solver`` section of a config: the continual classifier trained with replay from the continual
diffusion model (``scripts/classifier_cl_train.py``), registered on import. Its checks across keys hold
only for the programs that train it (``replays.check_solver``, a ``register_section_check``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from ...runtime.config import register_retired, register_section_schema
from ...sampling.config import check_sampler
from .replays import GuidedOptions, SoftOptions


@dataclass
class SolverConfig:
    """The continual classifier trained with replay from the continual diffusion model (GUIDE, Masip)."""

    arch: str = "cnn"  # cnn (Masip's CNN with every conv padded) | masip_cnn (Masip's exactly) | mlp (Masip's MLP solver) | resnet18 (pre-activation, GUIDE's)
    replay: str = "guided"  # none (fine-tune) | joint | plain | soft | soft_kd | argmax | guided
    diffusion_run: str = ""  # run folder of the continual diffusion model ("" -> this config's run folder)
    batch_size: int = 64  # B; per task i > 0 as solver.mixing splits it
    mixing: str = "guide"  # guide: B/(i+1) real + B*i/(i+1) replayed images (GUIDE) | masip: B real + B replayed (Masip et al.)
    init_num_steps: int = 500  # steps of the first task (GUIDE: disjoint_classifier_init_num_steps)
    num_steps: int = 300
    optimizer: str = "sgd"  # sgd (GUIDE: momentum, weight decay) | adam (Masip's CNN solver)
    init_lr: float = 0.1  # the first task's learning rate (see lr_schedule)
    lr_schedule: str = "linear"  # linear: decayed to 0 within each task (GUIDE) | constant (Masip et al.)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    trim_logits: Optional[bool] = None  # train on the logits of the classes seen so far only (GUIDE); unset: true,
    # except soft replay (Masip's soft targets are all logits of an untrimmed previous classifier: false)
    augment: str = ""  # comma list of crop, flip, rotation, jitter, erasing
    generation_interval: int = 1  # regenerate the replay batch every this many steps
    sampler: str = "ddim25"  # the replay sampler: ddimN (DDIM, eta 0, ADM's leading spacing) | ddimNt (trailing, Masip's) | N (ancestral) | unipcN ...
    # The options of one replay mode each (``continual.solver.replays``), read only when solver.replay names it:
    guided: GuidedOptions = field(default_factory=GuidedOptions)  # solver.replay=guided (GUIDE's guidance)
    soft: SoftOptions = field(default_factory=SoftOptions)  # solver.replay=soft (Masip's soft targets)
    soft_kd: SoftOptions = field(default_factory=SoftOptions)  # solver.replay=soft_kd
    eval_batch_size: int = 256
    log_interval: int = 50


register_section_schema("solver", None, SolverConfig, choices={"optimizer": ("sgd", "adam")},
                        key_checks={"sampler": lambda v: check_sampler("solver.sampler", v)})


# The keys that moved from the section into a replay mode's options (solver.scale_min -> solver.guided.scale_min):
# refused with the key to write; a run's saved config is read with them moved.
_GUIDED_KEYS = tuple(f.name for f in fields(GuidedOptions))


def retire_flat_replay_keys(tree: Dict[str, Any], context: Dict[str, Any]) -> List[str]:
    """Move ``solver.<key>`` of ``tree`` (one file's keys, or the command line's) into the options of the
    replay mode that reads it (``temperature``: soft_kd's when ``solver.replay`` is soft_kd in ``context``,
    the merged settings, else soft's); one line per key saying what to write."""
    part = tree.get("solver")
    if not isinstance(part, dict):
        return []
    ctx = context.get("solver") if isinstance(context.get("solver"), dict) else {}
    notes = []
    for key in [k for k in part if k in _GUIDED_KEYS or k == "temperature"]:
        mode = "guided" if key in _GUIDED_KEYS else \
            "soft_kd" if part.get("replay", ctx.get("replay")) == "soft_kd" else "soft"
        value = part.pop(key)
        options = part.setdefault(mode, {})
        if isinstance(options, dict):
            options.setdefault(key, value)
        shown = json.dumps(value) if isinstance(value, (bool, int, float)) else value
        notes.append(f"solver.{key} is an option of the {mode} replay now: write solver.{mode}.{key}={shown}")
    return notes


register_retired(retire_flat_replay_keys)
