"""The continual classifier's replay modes as parts chosen by name (``solver.replay``), like the
generator's continual methods (``continual.base.METHODS``).

A replay says which real classes a task trains on, whether old classes are replayed from the
diffusion model after the previous task, whether their targets are the previous classifier's
logits, how replayed images are guided, and the loss of a mixed batch (real rows first, then the
replayed rows). The solver (``continual.solver.learner``) knows no mode by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ...classifiers.nets import ARCHS
from ...diffusion.respace import sampler_of
from ...runtime.config import ConfigError, register_section_check
from .base import REPLAY_MODES, Replay, register_replay, trims_logits

from .guidance import guide_cond_fn


@dataclass
class SoftOptions:
    """``solver.soft`` / ``solver.soft_kd``: the options of the soft-target replays."""

    temperature: float = 2.0  # T of the soft targets (Masip et al.: 2)


@dataclass
class GuidedOptions:
    """``solver.guided``: GUIDE's guidance of the replayed old classes (cywinski/guide's flags, same names)."""

    scale_min: float = 1.0  # per-sample scale ~ U[scale_min, scale_max] (GUIDE: classifier_scale_{min,max}_{new,old})
    scale_max: float = 1.0
    use_old_grad: bool = False  # toward y under the classifier after the previous task (GUIDE)
    negate_old_grad: bool = False  # flip the sign of use_old_grad's gradient (GUIDE)
    use_new_grad: bool = True  # the classifier being trained guides (GUIDE)
    guid_to_new_classes: bool = True  # use_new_grad: toward the new class with the largest logit (GUIDE); false: away
    noised_classifier: bool = False  # guide with a second, time-conditioned classifier trained on q_sample(x, t) of the
    # same batches and applied to (x_t, t) (ADM's classic guidance; GUIDE's train_noised_classifier), not the solver on x̂0
    guidance_batch: int = 64  # images per guided sampling chunk (memory bound only)


def masip_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Masip et al.'s soft replay loss, exactly (their solver's distillation loss): T^2 times the row mean of
    -sum_c softmax(student/T)_c log softmax(teacher/T)_c over all logits of the classifier after the
    previous task. The student's softmax multiplies the teacher's log-softmax (their "reversed" soft
    cross-entropy): minimising it moves the student's mass to the teacher's most likely class, so
    it acts as a confidence-weighted pseudo-label. Student logits trimmed to -inf add nothing."""
    p_student = F.softmax(student_logits.float() / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return -(p_student * log_p_teacher).sum(-1).mean() * T * T


def soft_target_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, old_classes: List[int],
                   T: float) -> torch.Tensor:
    """``soft_kd`` replay (not Masip's): T^2 KL(p_teacher || p_student), the standard distillation
    direction, averaged over rows. The teacher gives a distribution over the old classes only; the
    student's is over all its logits (those of unseen classes may be -inf, trimmed), so mass it puts
    on the new classes counts against it."""
    old = torch.as_tensor(old_classes, device=student_logits.device)
    log_pt = F.log_softmax(teacher_logits.float().index_select(1, old) / T, -1)
    log_ps = F.log_softmax(student_logits.float() / T, -1).index_select(1, old)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * T * T


@register_replay("none")
class FineTuning(Replay):
    """Fine-tuning: the task's real data only."""


@register_replay("joint")
class Joint(Replay):
    """The upper bound: real data of every class seen so far."""

    def train_classes(self, task) -> tuple:
        return task.seen_classes


@register_replay("plain")
class Plain(Replay):
    """Replayed images with hard labels: the class they were conditioned on."""

    from_generator = True


@register_replay("soft")
class Soft(Replay):
    """Masip et al.'s ``WeightedSoftGenerativeReplay``: loss (1/(i+1)) CE_real + (i/(i+1)) ``masip_soft_loss``
    over all logits of the classifier after task i-1 (untrimmed, as their solver)."""

    from_generator = soft_targets = True
    trims_by_default = False

    @classmethod
    def check(cls, s, cfg) -> None:
        if s.trim_logits:
            raise ConfigError("solver.replay=soft is Masip's soft targets over all logits of the previous classifier, "
                              "which trimming leaves untrained for the classes it has not seen: leave "
                              "solver.trim_logits unset (or false) for soft, or use soft_kd (targets over the old "
                              "classes only)")

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, task) -> torch.Tensor:
        return masip_soft_loss(student, teacher, self.s.soft.temperature)

    def loss(self, logits, labels, n_real, soft, task):
        if soft is None:  # task 0: nothing replayed
            return F.cross_entropy(logits, labels)
        i = task.index
        real = F.cross_entropy(logits[:n_real], labels[:n_real])
        return real / (i + 1) + self.soft_loss(logits[n_real:], soft, task) * i / (i + 1)


@register_replay("soft_kd")
class SoftKD(Soft):
    """Standard distillation on the replayed rows: ``soft_target_kd`` over the old classes (not Masip's);
    trimmed by default."""

    trims_by_default = True

    @classmethod
    def check(cls, s, cfg) -> None:
        pass

    def soft_loss(self, student, teacher, task):
        return soft_target_kd(student, teacher, list(task.old_classes), self.s.soft_kd.temperature)


@register_replay("argmax")
class Argmax(Replay):
    """Hard targets from the previous classifier (van de Ven et al. 2020's "hard" replay, the alternative to
    their distillation): each replayed image's label is the previous classifier's argmax over the old
    classes; loss (1/(i+1)) CE_real + (i/(i+1)) CE_replay. Needs no class-conditional generator."""

    from_generator = soft_targets = True

    def loss(self, logits, labels, n_real, soft, task):
        if soft is None:  # task 0: nothing replayed
            return F.cross_entropy(logits, labels)
        i = task.index
        old = torch.as_tensor(list(task.old_classes), device=soft.device)
        hard = old[soft.index_select(1, old).argmax(-1)]
        real = F.cross_entropy(logits[:n_real], labels[:n_real])
        return real / (i + 1) + F.cross_entropy(logits[n_real:], hard) * i / (i + 1)


@register_replay("guided")
class Guided(Replay):
    """GUIDE: each replayed old class guided by ``guide_cond_fn`` with GUIDE's flags, at a per-sample scale
    ~ U[scale_min, scale_max]; on x̂0 through the diffusion network, or, with ``noised_classifier``, on
    x_t by a time-conditioned classifier."""

    from_generator = guides = True

    @classmethod
    def check(cls, s, cfg) -> None:
        solver, g = sampler_of(s.sampler), s.guided
        if (g.use_old_grad or g.use_new_grad) and not g.noised_classifier and solver:
            raise ConfigError(f"solver.sampler {s.sampler!r} is the {solver} solver, which cannot guide "
                              "through x̂0 (GUIDE's guidance without a noised classifier): use a 'ddimN' sampler, "
                              "or solver.guided.noised_classifier: true (guidance on x_t works with every sampler)")

    def cond_fn(self, task, n, gen, nets, seen_mask, old_mask):
        g = self.s.guided
        scales = g.scale_min + (g.scale_max - g.scale_min) * torch.rand(n, generator=gen)
        noised = nets["noised"] is not None
        clf, prev = (nets["noised"], nets["prev_noised"]) if noised else (nets["clf"], nets["prev"])
        return guide_cond_fn(clf, prev, seen_mask, task.classes, old_mask, scales, g, trims_logits(self.s),
                             noised=noised)


# How a task's batch splits between real and replayed images (task i > 0, batch B): GUIDE's B/(i+1) real and
# B i/(i+1) replayed, or Masip et al.'s B real and B replayed (their replay_size = the batch).
MIXINGS = ("guide", "masip")


def batch_split(mixing: str, batch: int, i: int):
    """(real, replayed) images per step of task ``i`` (i > 0) under ``mixing`` (``MIXINGS``)."""
    if mixing == "masip":
        return batch, batch
    return batch // (i + 1), (batch // (i + 1)) * i


def check_solver(s, cfg) -> None:
    """The ``solver`` section's checks across its keys and the model. Only the classifier's runs read
    the section (its defaults need a class-conditional model), so they run for them only: when its
    script loads the config (registered below), and in ``Solver`` for one built by hand."""
    if s.replay not in REPLAY_MODES:
        raise ConfigError(f"solver.replay {s.replay!r} is not one of {', '.join(REPLAY_MODES)}")
    if s.arch not in ARCHS:
        raise ConfigError(f"solver.arch {s.arch!r} is not one of {', '.join(ARCHS)}")
    replay = REPLAY_MODES[s.replay]
    if replay.guides and cfg.latent.autoencoder:
        raise ConfigError("solver.replay guided guides the sampling with the classifier, which sees images, not a "
                          "latent diffusion's latents: use plain, soft or soft_kd (replay decoded to images)")
    if replay.from_generator and not replay.soft_targets and not cfg.model.class_cond:
        raise ConfigError(f"solver.replay {s.replay} needs a class-conditional diffusion model (model.class_cond): "
                          f"it labels the replay by its conditioning class; an unconditional generator (Masip's VAE "
                          f"baseline, Masip et al.'s diffusion model) replays with soft, soft_kd or argmax (targets from the previous "
                          f"classifier)")
    if s.mixing not in MIXINGS:
        raise ConfigError(f"solver.mixing {s.mixing!r} is not one of {', '.join(MIXINGS)}")
    if s.lr_schedule not in ("linear", "constant"):
        raise ConfigError(f"solver.lr_schedule {s.lr_schedule!r} is not one of linear, constant")
    g = s.guided
    if g.use_old_grad and g.use_new_grad:
        raise ConfigError("solver.guided.use_old_grad and solver.guided.use_new_grad cannot both be true (as in GUIDE)")
    if g.negate_old_grad and not g.use_old_grad:
        raise ConfigError("solver.guided.negate_old_grad flips the old classifier's gradient: it needs "
                          "solver.guided.use_old_grad")
    if g.noised_classifier and not replay.guides:
        raise ConfigError(f"solver.guided.noised_classifier trains a second classifier for guidance: it needs "
                          f"solver.replay=guided, not "
                          f"{s.replay!r}")
    replay.check(s, cfg)


register_section_check("solver", check_solver)


def build_replay(s) -> Replay:
    """The replay part ``solver.replay`` names."""
    return REPLAY_MODES[s.replay](s)
