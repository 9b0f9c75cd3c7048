"""DKDM from a config: teacher, cache spec, preparation, and the student's training loop (the scripts' bodies)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import experiment
from ..experiment import DataInfo
from ..runtime import dist_util
from ..runtime.config import Config, ConfigError
from ..train_util import TrainLoop
from .cache import DynamicCache
from .config import cache_dir_of, check
from .format import check_key, read_header
from .objective import DKDMObjective
from .prepare import CacheSpec, cache_size, prepare_cache
from .teacher import Teacher, load_teacher


@dataclass
class Setup:
    teacher: Teacher
    diffusion: object  # the student's chain (the teacher's schedule)
    info: DataInfo  # image shape and classes, from the teacher: no data is read
    spec: CacheSpec
    cache_dir: str


def build_setup(cfg: Config, device) -> Setup:
    d = check(cfg)
    teacher = load_teacher(cfg, device)
    diffusion = experiment.build_diffusion(cfg)
    T = diffusion.num_timesteps
    if T < 2:
        raise ConfigError(f"the chain has T = {T} steps; DKDM needs T >= 2")
    if cfg.model.class_cond and not teacher.class_cond:
        raise ConfigError("model.class_cond is true but the teacher is unconditional: the cache would have no labels")
    info = DataInfo(cfg.model.num_classes or teacher.num_classes, teacher.channels, cfg.data.image_size)
    world = dist_util.get_world_size()
    B = cfg.train.batch_size
    try:
        n_total = cache_size(d.mode, d.rho, T, B)
    except ValueError as e:
        raise ConfigError(f"dkdm: {e}") from None
    if n_total % world:
        raise ConfigError(f"the cache of {n_total} entries cannot be split over {world} ranks")
    classes = tuple(range(teacher.num_classes)) if teacher.class_cond else None
    identity = {"teacher_sha256": teacher.sha256, "rho": d.rho if d.mode == "dynamic" else None, "global_batch": B,
                "noise_schedule": cfg.diffusion.noise_schedule, "diffusion_steps": cfg.diffusion.diffusion_steps,
                "timestep_respacing": cfg.diffusion.timestep_respacing}
    spec = CacheSpec(n_total, T, info.shape, d.mode, classes, cfg.seed, d.shard_size, d.clip_denoised, identity,
                     notes={"teacher_path": os.path.abspath(teacher.path)})
    return Setup(teacher, diffusion, info, spec, cache_dir_of(cfg))


def describe(cfg: Config, s: Setup) -> str:
    sp = s.spec
    n_teacher = sum(p.numel() for p in s.teacher.net.parameters())
    world = dist_util.get_world_size()
    return (f"DKDM {sp.mode} cache: {sp.n_total} entries ({sp.n_total // world} per rank over {world}), T = {sp.T}, "
            f"{f'labels of {len(sp.classes)} classes' if sp.classes else 'unlabelled'}; teacher {s.teacher.path} "
            f"({n_teacher / 1e6:.2f}M params, sha256 {s.teacher.sha256[:12]}); cache {s.cache_dir}")


def prepare(cfg: Config, device, logger) -> dict:
    """Prepare (or finish) the cache of ``cfg``; collective."""
    s = build_setup(cfg, device)
    logger.log(describe(cfg, s))
    return prepare_cache(s.teacher.net, s.teacher.diffusion, s.spec, s.cache_dir, prepare_batch=cfg.dkdm.prepare_batch,
                         device=device, logger=logger, precision=experiment.precision_of(cfg, device))


class EmptyBatches:
    """``TrainLoop`` data for a data-free objective: empty batches that carry the per-rank batch size."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return self

    def __next__(self):
        return torch.zeros(self.n, 1), torch.zeros(self.n, dtype=torch.long)


def train(cfg: Config, device, logger):
    """Distil the student of ``cfg`` from the teacher's cache (prepared first if missing); returns (loop, setup)."""
    s = build_setup(cfg, device)
    logger.log(describe(cfg, s))
    header = read_header(s.cache_dir)
    if header is None:
        logger.log(f"no complete cache in {s.cache_dir}: preparing it first")
        prepare_cache(s.teacher.net, s.teacher.diffusion, s.spec, s.cache_dir, prepare_batch=cfg.dkdm.prepare_batch,
                      device=device, logger=logger, precision=experiment.precision_of(cfg, device))
    else:
        check_key(header, s.spec.key(), s.cache_dir)
    cache = DynamicCache.open(s.cache_dir)
    model = experiment.build_model(cfg, s.info)
    n_student = sum(p.numel() for p in model.parameters())
    logger.log(f"student {n_student / 1e6:.2f}M params; {cfg.train.batch_size // dist_util.get_world_size()} "
               f"teacher NFEs per rank and step")
    weighting = None
    if cfg.train.loss_weighting != "none":  # the student weights its chain's timesteps as on real data
        from ..train_util import DiffusionObjective

        weighting = DiffusionObjective.from_config(cfg, s.diffusion, s.info.num_classes).loss_weight
    objective = DKDMObjective(s.teacher.net, s.teacher.diffusion, s.diffusion, cache, cfg.model.class_cond,
                              cfg.dkdm.clip_denoised, loss_weight=weighting)
    loop = TrainLoop(model=model, data=EmptyBatches(cfg.train.batch_size // dist_util.get_world_size()),
                     cfg=cfg.train, run_dir=experiment.run_dir_of(cfg), objective=objective, seed=cfg.seed,
                     logger=logger, device=device, export_config=experiment.export_config(cfg, s.info))
    loop.run()
    return loop, s


def save_samples(cfg: Config, loop: TrainLoop, s: Setup, device, logger) -> None:
    """``train.sample_at_end`` samples of the student's EMA (first rate) to <run dir>/samples.png."""
    from ..image_util import save_grid
    from ..sampling.sample_sets import sample_set

    n = cfg.train.sample_at_end
    if n <= 0:
        return
    model = loop.model
    model.load_state_dict(loop.ema_state_dicts()[loop.ema_rates[0]])
    spec = experiment.sample_spec(cfg, s.info, device, guidance_scale=1.0)  # DKDM trains no null class: no CFG
    images, _ = sample_set(model, spec, num_samples=n,
                           batch_size=cfg.sample.batch_size, seed=cfg.seed, classes=range(s.info.num_classes or 1))
    if dist_util.is_main():
        path = os.path.join(experiment.run_dir_of(cfg), "samples.png")
        save_grid(images, path)
        logger.log(f"wrote {path} ({len(images)} samples of the student, EMA {loop.ema_rates[0]})")
