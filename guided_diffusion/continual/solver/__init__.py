"""The continual classifier ("solver"): class-incremental training with replay from the diffusion model.

Per task i (GUIDE: Cywinski et al., cywinski/guide; Masip et al. 2023, Atenrev/diffusion_continual_learning):
- a batch is B/(i+1) real images of task i and B*i/(i+1) replay images of old classes, sampled
  from the diffusion model after task i-1 (its continual run folder), regenerated every
  ``generation_interval`` steps;
- ``replay``: ``plain`` (hard labels = the conditioning class), ``soft`` (Masip et al.'s
  ``WeightedSoftGenerativeReplay``, exactly: targets = all logits of the classifier after task i-1,
  loss (1/(i+1)) CE_real + (i/(i+1)) T^2 mean(-sum softmax(student/T) log softmax(teacher/T)),
  their "reversed" soft cross-entropy: ``masip_soft_loss``), ``soft_kd`` (standard distillation
  over the old classes: ``soft_target_kd``), ``guided`` (GUIDE: the sampling of an
  old class y is guided by ``guide_cond_fn`` with GUIDE's flags, by default toward the most likely
  *new* class of the classifier being trained, on the predicted x0, with a per-sample scale
  ~ U[scale_min, scale_max]; with ``noised_classifier`` a second, time-conditioned classifier,
  trained on q_sample(x, t) of the same batches with t, guides on x_t instead: ADM's classic
  guidance, GUIDE's ``train_noised_classifier``), ``joint`` (real data of all seen classes),
  ``none`` (fine-tuning);
- SGD with momentum and weight decay (GUIDE) or Adam (Masip), lr linearly decayed within the task;
  logits outside the classes seen so far are masked during training (``trim_logits``; unset: GUIDE's
  trimming, except soft replay, which is Masip's untrimmed recipe);
- after the task: accuracy on each seen task's test split (argmax over all logits), average
  accuracy and forgetting, and how the classifier after task i-1 judges the replay (the share of
  replayed images whose argmax over the old classes is the conditioning class, and its mean
  entropy over them), a row in ``metrics.csv``.
Resume is per task: finished tasks are skipped and the classifier restored; an unfinished task
restarts (``continual.tasks``, the generator's task loop too).

Modules: ``config`` (the ``solver`` section), ``learner`` (the ``Solver`` on the shared task loop,
``run_solver``), ``base`` and ``replays`` (the replay modes, registered by name, and the options of those
that take some: ``solver.guided``, ``solver.soft``, ``solver.soft_kd``), ``guidance`` (GUIDE's cond_fn, the
replay judgement), ``augment``.
"""

from .augment import augment
from .base import REPLAY_MODES, Replay, register_replay, trims_logits
from .config import SolverConfig
from .guidance import guide_cond_fn, replay_judgement
from .learner import USES, Solver, run_solver
from .replays import GuidedOptions, SoftOptions, check_solver, masip_soft_loss, soft_target_kd

__all__ = ["GuidedOptions", "REPLAY_MODES", "Replay", "SoftOptions", "Solver", "SolverConfig", "USES", "augment",
           "check_solver", "guide_cond_fn", "masip_soft_loss", "register_replay", "replay_judgement", "run_solver",
           "soft_target_kd", "trims_logits"]
