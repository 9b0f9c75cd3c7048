"""The ``dkdm`` section of a config (registered on import), for scripts/dynamic_prepare.py, dynamic_train.py
and dkdm_ablation.py.

    dkdm:
      teacher_path: experiments/mnist_iid   # weights (.pt / .safetensors) or a run folder (its newest EMA export)
      teacher_model: {}                     # the teacher's UNet options (ADM's keys); {}: the JSON beside its export
      mode: dynamic                         # dynamic | shuffled | iterative  (DKDM's ablation)
      rho: 0.4                              # dynamic: round(rho * T) batches per rank in the cache
      cache_dir: ""                         # "" -> <out_dir>/<name>/cache
      prepare_batch: 256                    # teacher batch per rank while preparing
      shard_size: 1024                      # cache entries per shard file (the unit of resumable preparation)
      clip_denoised: true                   # the teacher's x0 is clipped to [-1, 1] (as when it samples)

The student is ``model``; both share ``diffusion`` (the chain's T is ``diffusion.timestep_respacing``
when set, else ``diffusion_steps``), and ``train.batch_size`` is the global batch B.

The section's defaults are not a valid DKDM run (no teacher), so ``check`` runs only for the scripts
that read it (``USES``, their ``cli.parse(uses=...)``), not at every load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict

from ..runtime.config import Config, ConfigError, register_section_check, register_section_schema
from .prepare import MODES


@dataclass
class DKDMConfig:
    teacher_path: str = ""
    teacher_model: Dict[str, Any] = field(default_factory=dict)
    mode: str = "dynamic"
    rho: float = 0.4
    cache_dir: str = ""
    prepare_batch: int = 256
    shard_size: int = 1024
    clip_denoised: bool = True


# The sections the DKDM scripts read (prepare and train read the same file).
USES = ("data", "model", "diffusion", "train", "sample", "dist", "dkdm")


def check(cfg: Config) -> DKDMConfig:
    """The validated ``dkdm`` section of ``cfg`` (ConfigError naming the key otherwise)."""
    d = cfg.dkdm
    if not isinstance(d, DKDMConfig):
        raise ConfigError("the dkdm section was not validated: import guided_diffusion.dkdm.config before load_config")
    _check(d, cfg)
    return d


def _check(d: DKDMConfig, cfg: Config) -> None:
    """The section's checks across keys: what a DKDM run needs that the defaults do not give."""
    if d.mode not in MODES:
        raise ConfigError(f"dkdm.mode = {d.mode!r} is not one of {', '.join(MODES)}")
    if d.mode == "dynamic" and not d.rho > 0:
        raise ConfigError(f"dkdm.rho must be > 0, got {d.rho}")
    for key in ("prepare_batch", "shard_size"):
        if getattr(d, key) < 1:
            raise ConfigError(f"dkdm.{key} must be >= 1, got {getattr(d, key)}")
    if not d.teacher_path:
        raise ConfigError("dkdm.teacher_path is empty: the teacher's weights or its run folder")
    if cfg.train.schedule_sampler != "uniform":  # a loss-aware sampler would silently stay uniform
        raise ConfigError(f"train.schedule_sampler = {cfg.train.schedule_sampler!r} with dkdm: the student's t come "
                          "from the cache, not from a sampler; set train.schedule_sampler: uniform")


register_section_schema("dkdm", None, DKDMConfig)
register_section_check("dkdm", _check)


def cache_dir_of(cfg: Config) -> str:
    if cfg.dkdm.cache_dir:
        return os.path.expanduser(cfg.dkdm.cache_dir)
    return os.path.join(cfg.out_dir, cfg.name, "cache")
