"""Generative distillation from a DKDM dynamic cache of the previous model's own trajectories.

``dynamic_distillation`` is ``generative_distillation`` with another replay source. At each task
boundary (``before_task``) the teacher -- the model after the previous task -- prepares a dynamic
cache of its class-conditional ancestral trajectories, labels uniform over the old classes, each
stopped at a random step (DKDM, Xiang et al. 2025; ``guided_diffusion.dkdm``). The cache is stored
in the task folder (``task_{k}/dkdm_cache/``) and reused on resume. Every step, the replay batch is
``replay_batch`` random cache entries: finished ones restart from noise, all take one teacher
ancestral step (one teacher NFE per replayed sample), and the student matches the teacher's
prediction on those states. The advanced states are written back; the cache's current state is part
of the task's checkpoints. The loss is ``ReplayObjective``'s:

    loss = (1 - w) * data_loss + w * lambd * replay_loss,   w = k / (k + 1)   (weight_replay_loss)

with DKDM's student loss as the replay term (``dkdm.objective.teacher_losses``, the DKDM scripts'
own): the teacher's output by MSE plus, for a ``learn_sigma`` model, the KL between the teacher's
and the student's step distributions, which trains the variance channels on replayed states as the
data term's vb does on real ones. ``criterion: min_snr`` weights it per sample by min-SNR.

Cost per step: ``replay_batch`` teacher NFEs (full generation with a 2-step DDIM teacher costs three
per replayed sample), plus once per task the preparation, about N T' / 2 NFEs for a cache of
N = round(rho T') replay batches on a chain of T' steps (``cache_sampler``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ...diffusion.diffusion_math import min_snr_weight
from ...dkdm.cache import DynamicCache, TeacherBatch
from ...dkdm.objective import teacher_losses
from ...dkdm.prepare import MODES, CacheSpec, cache_nfe, cache_size, prepare_cache
from ...dkdm.teacher import state_sha256
from ...experiment import build_diffusion, precision_of
from ...runtime.config import ConfigError
from ...runtime.seeding import step_seed
from ...sampling.config import check_sampler
from ..base import ContinualMethod, register_method, state_floats_M
from ..replay import ReplayBatch
from .generative import REPLAY_TERMS, ReplayObjective, check_replay_batch, check_replay_weighting

CRITERIA = ("mse", "min_snr")


class CacheReplayObjective(ReplayObjective):
    """``ReplayObjective`` whose replay batch comes from the teacher's dynamic cache and whose replay
    term is DKDM's student loss on it."""

    def __init__(self, base, method, task, cache: DynamicCache, chain):
        super().__init__(base, method, task)
        self.cache = cache
        self.chain = chain  # the teacher's ancestral chain (maybe respaced)
        self.timesteps = torch.as_tensor(chain.timestep_map, dtype=torch.long)  # chain index -> training timestep
        self._batch = None
        self._part: Optional[TeacherBatch] = None  # this microbatch's teacher step (the replay term's target)

    def replay_batch(self, n: int, x: torch.Tensor, ctx) -> ReplayBatch:
        if ctx.microbatch == 0:  # the whole step's entries at once: distinct over microbatches, one write-back
            self._batch = self.cache.advance(self.method.teacher, self.chain, n * ctx.num_microbatches,
                                             ctx.generator, x.device)
        b = self._batch.slice(ctx.microbatch * n, (ctx.microbatch + 1) * n)
        self._part = b
        t = self.timesteps.to(b.t.device)[b.t]
        y = b.y if self.base.class_cond else None
        return ReplayBatch(b.x_t, t, y, b.model_output, n)

    def drop_replay_labels(self, replay: ReplayBatch, ctx) -> ReplayBatch:
        """As ``ReplayObjective``'s (the same draws), but a dropped label's target is the teacher's whole
        null-class step: its output, and its mean and variance for the step KL."""
        if self.base.uncond_p <= 0 or replay.y is None:
            return replay
        y = self.base.drop_labels(replay.y, ctx)
        dropped = y != replay.y
        b, nfe = self._part, replay.teacher_nfe
        fields = {"model_output": b.model_output, "eps": b.eps, "mean": b.mean, "log_variance": b.log_variance}
        if bool(dropped.any()):
            with torch.no_grad():
                out = self.chain.p_mean_variance(self.method.teacher, b.x_t[dropped], b.t[dropped], clip_denoised=True,
                                                 model_kwargs={"y": y[dropped]})
            for k, v in fields.items():
                fields[k] = v.clone()
                fields[k][dropped] = out[k].to(v.dtype)
            nfe += int(dropped.sum())
        self._part = TeacherBatch(b.x_t, b.t, y, restarts=b.restarts, **fields)
        return ReplayBatch(replay.x, replay.t, y, self._part.model_output, nfe)

    def replay_loss(self, out: torch.Tensor, replay: ReplayBatch) -> torch.Tensor:
        """DKDM's per-sample student loss (``teacher_losses``, on the teacher's chain) of the replayed
        states, weighted as the data term (``train.loss_weighting``) or by min-SNR (``criterion``)."""
        per = teacher_losses(self.chain, out, self._part)["loss"]
        if self.base.loss_weighting != "none":
            weights = self.base.loss_weight(replay.t)
        elif self.method.mcfg.criterion == "min_snr":  # replay_criterion's min-SNR weights, on the whole term
            mode = "x0" if self.diffusion.predicts_xstart else "eps"
            weights = min_snr_weight(self.diffusion.alpha_bar(replay.t), self.method.mcfg.min_snr_gamma, mode)
        else:
            weights = None
        return (per * weights).mean() if weights is not None else per.mean()

    def state_dict(self):
        return {**super().state_dict(), "dkdm_cache": self.cache.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.cache.load_state_dict(state["dkdm_cache"])


@register_method("dynamic_distillation")
class DynamicDistillation(ContinualMethod):
    """Generative distillation on the states of a DKDM dynamic cache kept by the teacher."""

    needs_teacher = True
    distill = True
    terms = REPLAY_TERMS

    @classmethod
    def owns_forward(cls, mcfg):
        return True

    @dataclass
    class Config:
        name: str = "dynamic_distillation"
        lambd: float = 1.0
        criterion: str = "mse"  # mse (DKDM's) | min_snr (per-sample weights on it)
        min_snr_gamma: float = 5.0
        replay_batch: int = 0  # cache entries per step over all ranks, as train.batch_size (0: = the data batch)
        weight_replay_loss: bool = True
        mode: str = "dynamic"  # dynamic | shuffled | iterative (DKDM's ablation)
        rho: float = 0.4  # dynamic: round(rho * T') replay batches per rank in the cache
        cache_sampler: str = ""  # the teacher's chain, ancestral (DKDM): N steps ("": every training step; e.g. "100")
        prepare_batch: int = 256  # teacher batch per rank while preparing
        shard_size: int = 1024  # cache entries per shard file

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        if mcfg.criterion not in CRITERIA:  # the replay term is DKDM's loss: no smooth_l1 of it
            raise ConfigError(f"method.criterion {mcfg.criterion!r} is not one of {', '.join(CRITERIA)} "
                              "(dynamic_distillation's replay term is DKDM's MSE + step KL)")
        check_replay_weighting(mcfg, cfg)
        if mcfg.mode not in MODES:
            raise ConfigError(f"method.mode {mcfg.mode!r} is not one of {', '.join(MODES)}")
        if mcfg.lambd < 0:
            raise ConfigError(f"method.lambd must be >= 0, got {mcfg.lambd}")
        if cfg.latent.autoencoder:  # its cache clips the teacher's x0 to [-1, 1]: images only
            raise ConfigError("dynamic_distillation runs on images, not latents (latent.autoencoder): use "
                              "generative_distillation for latent diffusion")
        if cfg.diffusion.timestep_respacing:
            raise ConfigError("dynamic_distillation trains on the full diffusion: leave diffusion.timestep_respacing "
                              "empty and shorten the teacher's chain with method.cache_sampler")
        check_sampler("method.cache_sampler", mcfg.cache_sampler, kinds=("ancestral",),
                      why="the cache advances the teacher's trajectories by ancestral steps (DKDM)")
        chain = build_diffusion(cfg, mcfg.cache_sampler)
        if chain.num_timesteps < 2:
            raise ConfigError("method.cache_sampler must keep at least 2 steps")
        check_replay_batch(mcfg, world_size)
        batch = (mcfg.replay_batch or cfg.train.batch_size) // world_size
        try:
            cache_size(mcfg.mode, mcfg.rho, chain.num_timesteps, batch * world_size)
        except ValueError as e:
            raise ConfigError(f"method: {e}") from None

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.chain = build_diffusion(ctx.cfg, mcfg.cache_sampler)
        self.batch = (mcfg.replay_batch or ctx.cfg.train.batch_size) // ctx.world_size  # this rank's share
        self.n_total = cache_size(mcfg.mode, mcfg.rho, self.chain.num_timesteps, self.batch * ctx.world_size)
        self.cache = None
        self.prep_nfe = 0

    def cache_spec(self, task, teacher) -> CacheSpec:
        """The cache of ``task``: its entries, chain, old classes, seed and identity."""
        m, ctx = self.mcfg, self.ctx
        cond = ctx.cfg.model.class_cond
        return CacheSpec(
            self.n_total, self.chain.num_timesteps, ctx.info.shape, m.mode, tuple(task.old_classes) if cond else None,
            seed=step_seed(ctx.cfg.seed, task.index, 0xDC) % (2**31), shard_size=m.shard_size,
            # "cache_respacing": the stored caches' name for the chain (a cache made before the key was
            # method.cache_sampler is still this run's cache)
            identity={"teacher_sha256": state_sha256(teacher), "task": task.index, "rho": m.rho,
                      "cache_respacing": m.cache_sampler, "replay_batch": self.batch * ctx.world_size},
        )

    def before_task(self, task, teacher):
        super().before_task(task, teacher)
        self.cache = None
        self.prep_nfe = 0
        if teacher is None:
            return
        m, ctx = self.mcfg, self.ctx
        spec = self.cache_spec(task, teacher)
        self.prep_nfe = cache_nfe(spec)
        cache_dir = os.path.join(ctx.task_dir(task), "dkdm_cache")
        start = time.time()
        stats = prepare_cache(teacher, self.chain, spec, cache_dir, prepare_batch=m.prepare_batch,
                              device=ctx.device, logger=ctx.logger, precision=precision_of(ctx.cfg, ctx.device))
        if not stats["complete_before"]:
            ctx.logger.log(f"task {task.index}: dynamic cache of {self.n_total} entries "
                           f"({m.mode}, T' = {self.chain.num_timesteps}) prepared in {time.time() - start:.1f}s, "
                           f"{stats['nfe']} teacher NFEs")
        self.cache = DynamicCache.open(cache_dir, ctx.rank, ctx.world_size)

    def objective(self, task, base):
        if task.index == 0 or self.teacher is None:
            return base
        return CacheReplayObjective(base, self, task, self.cache, self.chain)

    def task_columns(self, task):
        """The teacher NFEs of preparing the task's cache (paid once a task, whether prepared by this
        process or found on disk): the cache's cost beside the per-step teacher NFEs; ``extra_state_M``:
        the teacher's weights (the cache itself is on disk, not counted)."""
        return {"prep_teacher_nfe": self.prep_nfe,
                "extra_state_M": state_floats_M(self.teacher.parameters() if self.teacher is not None else [])}
