"""Generative replay (self-rehearsal) and generative distillation for diffusion models.

``generative_replay`` (style ``masip``) and ``generative_distillation`` share one objective: each
step, a replay batch is made by the frozen teacher (the model after the previous task) and joins
the real batch in one forward pass (Masip et al. 2023, sec. 4):

    data_loss   = ADM diffusion loss on the real batch
    replay_loss = criterion(student(x_in, t), target)          target: noise (replay) | teacher (distillation)
    w           = k / (k + 1)                                  k = 0-based task index
    loss        = (1 - w) * data_loss + w * lambd * replay_loss   (weight_replay_loss)
                = data_loss + lambd * replay_loss                 (otherwise)

``lwf`` distils the teacher's prediction on the current task's own noisy inputs: no generation.

``generative_replay`` with style ``guide`` is GUIDE's self-rehearsal: before task k the teacher
generates ``n_per_task * k`` images of old classes (uniform labels), which are mixed into the
task's data set; the objective is the plain diffusion loss.

Classifier-free guidance (``train.uncond_p`` > 0): labels are dropped to the null class on the
real batch and on the replay batch alike (a dropped replay label's distillation target is the
teacher's null-class prediction), and the teacher's generation honours ``sample.guidance_scale``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import blobfile as bf
import torch

from ... import experiment
from ...image_util import from_uint8
from ...runtime import dist_util
from ...runtime import checkpoint as ckpt
from ...runtime import faults
from ...sampling.config import check_sampler
from ...sampling.sample_sets import sample_set
from ..base import ANY_GENERATOR, ContinualMethod, ObjectiveWrapper, register_method, state_floats_M
from ..replay import (
    SOURCES,
    ReplayBatch,
    replay_criterion,
    replay_inputs,
    teacher_prediction,
)


REPLAY_TERMS = ("data_loss", "replay_loss", "replay_sec", "teacher_nfe")  # ReplayObjective's, beyond the base's


class ReplayObjective(ObjectiveWrapper):
    """Real batch + teacher-made replay batch in one forward; see the module docstring."""

    def __init__(self, base, method, task):
        super().__init__(base)
        self.method = method
        self.task = task

    def __call__(self, model, x, y, ctx):
        m = self.method.mcfg
        diffusion = self.diffusion
        B = x.shape[0]
        k = self.task.index
        t, weights = self.base.sample_t(B, x.device, ctx)
        noise = torch.randn(x.shape, generator=ctx.generator).to(x.device)
        y = self.base.drop_labels(y, ctx)  # classifier-free guidance training (no draw when uncond_p is 0)
        x_t = diffusion.q_sample(x, t, noise=noise)
        cond = self.base.class_cond
        start = time.perf_counter()
        source = getattr(m, "source", "full_generation")
        if source == "lwf":
            teacher_target = teacher_prediction(self.method.teacher, diffusion, x_t, t, y if cond else None)
            replay = None
            nfe = B
        else:
            # replay_batch is global, as train.batch_size: each rank makes its share (the replay work
            # per rank falls with the ranks); 0: as many as the rank's real images.
            per_rank = m.replay_batch // ctx.world_size if m.replay_batch else B * ctx.num_microbatches
            n_r = max(1, per_rank // ctx.num_microbatches)
            replay = self.drop_replay_labels(self.replay_batch(n_r, x, ctx), ctx)
            faults.point("replay_generation")
            nfe = replay.teacher_nfe
        replay_sec = time.perf_counter() - start
        if replay is not None:
            inp = torch.cat([x_t, replay.x])
            tt = torch.cat([t, replay.t])
            kwargs = {"y": torch.cat([y, replay.y])} if cond else {}
        else:
            inp, tt, kwargs = x_t, t, ({"y": y} if cond else {})
        out = model(inp, diffusion.model_timesteps(tt), **kwargs)
        out_data = out[:B]
        # ADM's loss on the real half, with the output computed above (one forward for both halves).
        losses = diffusion.training_losses(lambda *a, **kw: out_data, x, t,
                                           model_kwargs=self.base.model_kwargs(y), noise=noise)
        # The data term's losses at the sampler's t, as DiffusionObjective (loss-aware samplers; the
        # replay term's t are not the sampler's and do not enter it).
        self.base.update_sampler(t, losses["loss"])
        data_loss = (losses["loss"] * weights).mean()
        if replay is None:  # lwf: the teacher's prediction on the real half's own inputs
            replay_loss = self.replay_loss(out_data, ReplayBatch(x_t, t, y if cond else None, teacher_target, nfe))
        else:
            replay_loss = self.replay_loss(out[B:], replay)
        if m.weight_replay_loss:
            w = k / (k + 1)
            loss = (1 - w) * data_loss + w * m.lambd * replay_loss
        else:
            loss = data_loss + m.lambd * replay_loss
        terms = {"loss": loss.detach(), "data_loss": data_loss.detach(), "replay_loss": replay_loss.detach(),
                 "mse": losses["mse"].detach().mean(), "replay_sec": torch.tensor(replay_sec),
                 "teacher_nfe": torch.tensor(float(nfe))}
        if "vb" in losses:
            terms["vb"] = losses["vb"].detach().mean()
        return loss, terms

    def replay_loss(self, out: torch.Tensor, replay: ReplayBatch) -> torch.Tensor:
        """The replay term from the student's output ``out`` on ``replay.x``: Masip's criterion between
        its first C channels and ``replay.target``, each sample weighted as the data term
        (``train.loss_weighting``). Subclasses with another target change it."""
        m = self.method.mcfg
        C = replay.target.shape[1]
        weights = self.base.loss_weight(replay.t) if self.base.loss_weighting != "none" else None
        return replay_criterion(m.criterion, out[:, :C].float(), replay.target.float(), replay.t, self.diffusion,
                                m.min_snr_gamma, weights=weights)

    def replay_batch(self, n: int, x: torch.Tensor, ctx) -> ReplayBatch:
        """``n`` teacher-made replay samples for images shaped like ``x`` (subclasses change the source)."""
        m = self.method.mcfg
        return replay_inputs(
            self.method.teacher, self.diffusion, source=getattr(m, "source", "full_generation"), n=n,
            shape=x.shape[1:], old_classes=self.task.old_classes if self.base.class_cond else None,
            distill=self.method.distill, teacher_steps=m.teacher_steps, teacher_eta=m.teacher_eta,
            t_min=m.replay_start_timestep, generator=ctx.generator, device=x.device,
            guidance_scale=self.method.generation_guidance, null_class=self.base.null_class,
            clip=self.method.clip_generation, rederive_eps=m.rederive_eps,
            per_sample_partial=getattr(m, "partial_schedule", "grid") == "per_sample",
        )

    def drop_replay_labels(self, replay: ReplayBatch, ctx) -> ReplayBatch:
        """Label dropout on the replay batch too, so that the null class keeps predicting for the old
        classes; the distillation target of a dropped label is the teacher's null-class prediction."""
        if self.base.uncond_p <= 0 or replay.y is None:
            return replay
        y = self.base.drop_labels(replay.y, ctx)
        dropped = y != replay.y
        target, nfe = replay.target, replay.teacher_nfe
        if self.method.distill and bool(dropped.any()):
            target = target.clone()
            target[dropped] = teacher_prediction(self.method.teacher, self.diffusion, replay.x[dropped],
                                              replay.t[dropped], y[dropped]).to(target.dtype)
            nfe += int(dropped.sum())
        return ReplayBatch(replay.x, replay.t, y, target, nfe)


class _ReplayMethod(ContinualMethod):
    needs_teacher = True
    distill = False
    terms = REPLAY_TERMS

    @classmethod
    def owns_forward(cls, mcfg):
        return getattr(mcfg, "style", "masip") != "guide"  # guide's replay is data

    @property
    def generation_guidance(self) -> float:
        """The classifier-free guidance scale of the teacher's generation (``sample.guidance_scale``)."""
        ctx = getattr(self, "ctx", None)
        return float(ctx.cfg.sample.guidance_scale) if ctx is not None else 1.0

    @property
    def clip_generation(self) -> bool:
        """The teacher's x0 clipped to [-1, 1] while it generates: for images, not for latents."""
        ctx = getattr(self, "ctx", None)
        return not (ctx is not None and ctx.cfg.latent.autoencoder)

    def objective(self, task, base):
        if task.index == 0 or self.teacher is None:
            return base
        return ReplayObjective(base, self, task)

    def task_columns(self, task):
        """``extra_state_M``: the teacher's weights (the previous task's model) and the replay images it
        made for the task, when they are stored (GUIDE's style)."""
        replay = getattr(self, "replay_x", None)
        return {"extra_state_M": state_floats_M(self.teacher.parameters() if self.teacher is not None else [],
                                                images=0 if replay is None else len(replay), image=replay)}


@register_method("generative_distillation")
class GenerativeDistillation(_ReplayMethod):
    """The student matches the teacher's prediction on teacher-made inputs (Masip et al. 2023)."""

    distill = True

    @dataclass
    class Config:
        name: str = "generative_distillation"
        source: str = "full_generation"  # full_generation | partial_generation | gaussian | gaussian_symmetry | lwf
        lambd: float = 1.0
        criterion: str = "mse"  # mse | smooth_l1 | min_snr
        min_snr_gamma: float = 5.0
        teacher_steps: int = 2  # DDIM steps of the teacher's generation
        teacher_eta: float = 0.0
        rederive_eps: bool = True  # the teacher's DDIM re-derives eps from its clipped x0 (GLIDE); Masip et al.'s pipeline keeps the network's eps: false
        partial_schedule: str = "grid"  # partial_generation: grid (trailing steps shared, a jump to each t) | per_sample (teacher_steps steps from 999 to each sample's t: Masip et al.)
        replay_batch: int = 0  # replay images per step over all ranks, as train.batch_size (0: = the data batch)
        replay_start_timestep: int = 0
        weight_replay_loss: bool = True

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        from ...runtime.config import ConfigError

        if mcfg.source not in SOURCES + ("lwf",):
            raise ConfigError(f"method.source {mcfg.source!r} is not one of {', '.join(SOURCES + ('lwf',))}")
        if mcfg.partial_schedule not in ("grid", "per_sample"):
            raise ConfigError(f"method.partial_schedule {mcfg.partial_schedule!r} is not one of grid, per_sample")
        _check_common(mcfg, cfg, world_size)


@register_method("generative_replay", generators=ANY_GENERATOR)
class GenerativeReplay(_ReplayMethod):
    """Self-rehearsal: the previous model generates old classes, the new one trains on them. With
    ``generator: vae`` (Masip's VAE baseline), the previous VAE's samples join each real batch as
    data, as many as the batch (their ``UpdatedGenerativeReplayPlugin``): only ``style: masip`` applies
    and the diffusion keys (lambd, criterion, teacher_steps, ...) are not read."""

    @dataclass
    class Config:
        name: str = "generative_replay"
        style: str = "masip"  # masip: a replay batch every step | guide: a generated set mixed into the data
        lambd: float = 1.0
        criterion: str = "mse"
        min_snr_gamma: float = 5.0
        teacher_steps: int = 2  # masip: DDIM steps of each replay generation
        teacher_eta: float = 0.0
        rederive_eps: bool = True  # masip: the teacher's DDIM re-derives eps from its clipped x0 (GLIDE); Masip et al.'s pipeline keeps the network's eps: false
        replay_batch: int = 0  # masip: replay images per step over all ranks (0: = the data batch)
        replay_start_timestep: int = 0
        weight_replay_loss: bool = True
        n_per_task: int = 1000  # guide: images generated per old task
        sampler: str = "ddim50"  # guide: the generation sampler (ddimN: DDIM, eta 0 | N: ancestral | unipcN ...)
        generation_batch: int = 256

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        from ...runtime.config import ConfigError

        if mcfg.style not in ("masip", "guide"):
            raise ConfigError(f"method.style {mcfg.style!r} is not one of masip, guide")
        if cfg.latent.autoencoder and mcfg.style == "guide":
            raise ConfigError("method.style guide stores its replay set as images; with latent diffusion use style "
                              "masip (replay latents every step) or buffer_replay")
        if cfg.generator == "vae" and mcfg.style != "masip":
            raise ConfigError("generator: vae replays its samples in every batch (Masip's VAE baseline): "
                              "method.style must be masip")
        if mcfg.style == "guide" and not cfg.model.class_cond:
            raise ConfigError("method.style guide (GUIDE) generates images of the old classes by label: it needs a "
                              "class-conditional model (model.class_cond: true)")
        check_sampler("method.sampler", mcfg.sampler)
        _check_common(mcfg, cfg, world_size)

    def __init__(self, mcfg, ctx):
        super().__init__(mcfg, ctx)
        self.replay_x = self.replay_y = None

    def objective(self, task, base):
        if self.mcfg.style == "guide":
            return base
        if hasattr(base, "with_replay") and task.index > 0 and self.teacher is not None:
            return base.with_replay(self.teacher)  # the VAE: the teacher's samples are data
        return super().objective(task, base)

    def before_task(self, task, teacher):
        super().before_task(task, teacher)
        self.replay_x = self.replay_y = None
        if self.mcfg.style != "guide" or task.index == 0:
            return
        path = f"{self.ctx.task_dir(task)}/replay_set.pt"
        data = None
        if bf.exists(path):  # generated once per task, reused on resume
            try:
                data = ckpt.load_torch(path)
            except ckpt.CheckpointError as e:  # truncated or corrupt: made again (the same images)
                self.ctx.logger.log(f"task {task.index}: {e}; generating the replay set again")
        if data is None:
            n = self.mcfg.n_per_task * task.index
            cfg = self.ctx.cfg
            info = self.ctx.info
            spec = experiment.sampling_spec(cfg, info.shape, info.num_classes, sampler=self.mcfg.sampler,
                                            device=self.ctx.device)
            start = time.time()
            images, labels = sample_set(teacher, spec, num_samples=n, batch_size=self.mcfg.generation_batch,
                                        seed=cfg.seed + 7919 * task.index, classes=task.old_classes)
            self.ctx.logger.log(f"task {task.index}: generated {n} replay images in {time.time() - start:.1f}s")
            faults.point("replay_generation")
            if dist_util.is_main():
                ckpt.atomic_torch_save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, path)
            dist_util.barrier()
            data = ckpt.load_torch(path)
        self.replay_x = from_uint8(data["images"].numpy())
        self.replay_y = data["labels"].long()

    def task_data(self, task, x, y):
        if self.replay_x is None:
            return x, y
        return torch.cat([x, self.replay_x]), torch.cat([y, self.replay_y])


def check_replay_weighting(mcfg, cfg) -> None:
    """The replay term takes the data term's ``train.loss_weighting``; Masip's ``criterion: min_snr``
    on top of ``train.loss_weighting: min_snr`` would weight the replay term twice."""
    from ...runtime.config import ConfigError

    if mcfg.criterion == "min_snr" and cfg.train.loss_weighting != "none":
        raise ConfigError(f"method.criterion min_snr with train.loss_weighting {cfg.train.loss_weighting}: the replay "
                          "term already takes the data term's weighting; set method.criterion mse")


def _check_common(mcfg, cfg, world_size: int):
    from ...runtime.config import ConfigError

    if cfg.diffusion.timestep_respacing:
        raise ConfigError("replay methods train on the full chain: leave diffusion.timestep_respacing empty "
                          "(the samplers are continual.eval_sampler and, GUIDE's style, method.sampler)")
    if mcfg.criterion not in ("mse", "smooth_l1", "min_snr"):
        raise ConfigError(f"method.criterion {mcfg.criterion!r} is not one of mse, smooth_l1, min_snr")
    check_replay_weighting(mcfg, cfg)
    if mcfg.teacher_steps < 1:
        raise ConfigError(f"method.teacher_steps must be >= 1, got {mcfg.teacher_steps}")
    if not 0 <= mcfg.replay_start_timestep < cfg.diffusion.diffusion_steps:  # the full chain (checked above)
        raise ConfigError("method.replay_start_timestep must be in [0, diffusion_steps)")
    if mcfg.lambd < 0:
        raise ConfigError(f"method.lambd must be >= 0, got {mcfg.lambd}")
    check_replay_batch(mcfg, world_size)


def check_replay_batch(mcfg, world_size: int):
    """``method.replay_batch`` is a global batch: >= 0 and split evenly over the ranks."""
    from ...runtime.config import ConfigError

    if mcfg.replay_batch < 0:
        raise ConfigError(f"method.replay_batch must be >= 0, got {mcfg.replay_batch}")
    if mcfg.replay_batch % world_size:
        raise ConfigError(f"method.replay_batch {mcfg.replay_batch} is not divisible by the world size "
                          f"{world_size} (it is the replay batch over all ranks, as train.batch_size)")
