"""The DKDM student objective: match the teacher's output (and its step distribution) on cache states.

Per sample (Xiang et al. 2025, eq. 9-10, with IDDPM's hybrid convention):

    L_mse = mean((out_T(x_t, t) - out_S(x_t, t))^2)      first C channels, raw: eps (x0 for an x0 model)
    L_vb  = KL( N(mu_T, sigma_T^2) || N(mu_S, sigma_S^2) ) in bits, mean over dims   (student learns sigma)
            mu_S from the student's output *detached* and its own variance channels (the KL trains
            only the variance), times T/1000 for rescale_learned_sigmas
    L     = L_mse + L_vb

(x_t, t) come from the dynamic cache, not from a schedule sampler, and the teacher makes one NFE
per sample and step. The student may have any architecture; it never sees data.
``teacher_losses`` is this math on a given network output: the DKDM scripts' ``DKDMObjective`` and
the continual ``dynamic_distillation`` method (whose forward also carries the real batch) share it.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..diffusion.gaussian_diffusion import LossType, mean_flat, step_kl
from .cache import DynamicCache, TeacherBatch


def teacher_losses(diffusion, out: torch.Tensor, batch: TeacherBatch) -> Dict[str, torch.Tensor]:
    """Per-sample ``mse``, ``vb`` (learned sigma only) and ``loss`` of the student's output ``out``
    (C or 2C channels) at ``(batch.x_t, batch.t)``; ``batch.t`` indexes ``diffusion`` (the teacher's chain).

    The mean term compares raw outputs, as DKDM's ``training_losses_kd`` (``out['model_output']``):
    eps for an eps model, x0 for an x0 model (teacher and student share the parameterisation), so
    that ``train.loss_weighting`` weights it as the data term of that model.
    """
    x_t, t = batch.x_t, batch.t
    C = x_t.shape[1]
    terms = {}
    if diffusion.learns_variance:
        mean_part, var_values = torch.split(out, C, dim=1)
        frozen = torch.cat([mean_part.detach(), var_values], dim=1)
        student = diffusion.p_mean_variance_from_output(frozen, x_t, t, clip_denoised=False)
        terms["vb"] = step_kl(batch.mean, batch.log_variance, student["mean"], student["log_variance"])
        if diffusion.loss_type == LossType.RESCALED_MSE:
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)
    else:
        mean_part = out
    terms["mse"] = mean_flat((batch.model_output.float() - mean_part.float()) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms


def student_losses(model, diffusion, batch: TeacherBatch, class_cond: bool) -> Dict[str, torch.Tensor]:
    """``teacher_losses`` of ``model``'s prediction on the teacher batch (one forward)."""
    kwargs = {"y": batch.y} if class_cond else {}
    out = model(batch.x_t, diffusion.model_timesteps(batch.t), **kwargs)
    return teacher_losses(diffusion, out, batch)


class DKDMObjective:
    """``objective(model, x, y, ctx)`` for ``TrainLoop``: x only says the microbatch's size and device.

    At the first microbatch of a step the cache advances the rank's whole batch (one teacher NFE
    per sample, collective write-back); every microbatch then trains on its slice. The cache is
    the objective's resumable state.
    """

    def __init__(self, teacher, teacher_diffusion, diffusion, cache: DynamicCache, class_cond: bool,
                 clip_denoised: bool = True, loss_weight=None):
        self.loss_weight = loss_weight  # t -> per-sample weights (train.loss_weighting), or None
        self.teacher = teacher
        self.teacher_diffusion = teacher_diffusion
        self.diffusion = diffusion
        self.cache = cache
        self.class_cond = class_cond
        self.clip_denoised = clip_denoised
        self._batch: Optional[TeacherBatch] = None
        self._step = -1

    def __call__(self, model, x, y, ctx):
        n = x.shape[0]
        if ctx.microbatch == 0:
            self._batch = self.cache.advance(self.teacher, self.teacher_diffusion, n * ctx.num_microbatches,
                                             ctx.generator, x.device, self.clip_denoised)
            self._step = ctx.step
        elif self._step != ctx.step:
            raise RuntimeError("DKDMObjective: a step must start with microbatch 0")
        part = self._batch.slice(ctx.microbatch * n, (ctx.microbatch + 1) * n)
        losses = student_losses(model, self.diffusion, part, self.class_cond)
        loss = (losses["loss"] * self.loss_weight(part.t)).mean() if self.loss_weight else losses["loss"].mean()
        terms = {k: v.detach().mean() for k, v in losses.items()}
        terms["teacher_nfe"] = torch.tensor(float(n * ctx.num_microbatches))  # per rank and step
        terms["restarts"] = torch.tensor(float(self._batch.restarts))
        terms["t_mean"] = part.t.float().mean()
        return loss, terms

    def state_dict(self):
        return {"cache": self.cache.state_dict()}

    def load_state_dict(self, state):
        self.cache.load_state_dict(state["cache"])
