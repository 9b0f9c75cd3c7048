"""The ``solver`` section of a config: the continual classifier trained with replay from the continual
diffusion model (``scripts/classifier_cl_train.py``), registered on import. Its checks across keys hold
only for the programs that train it (``replays.check_solver``, a ``register_section_check``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...runtime.config import register_section_schema
from ...sampling.config import check_sampler


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
    guidance_batch: int = 64  # images per guided sampling chunk (memory bound)
    scale_min: float = 1.0  # guided: per-sample scale ~ U[scale_min, scale_max]
    scale_max: float = 1.0
    use_old_grad: bool = False  # guided: toward y under the classifier after the previous task (GUIDE)
    negate_old_grad: bool = False  # guided: flip the sign of use_old_grad's gradient (GUIDE)
    use_new_grad: bool = True
    guid_to_new_classes: bool = True
    noised_classifier: bool = False  # guided: guide with a second, time-conditioned classifier trained on q_sample(x, t)
    # of the same batches and applied to (x_t, t) (ADM's classic guidance; GUIDE's train_noised_classifier), not the solver on x̂0
    temperature: float = 2.0  # soft replay: the temperature T of Masip's soft targets
    eval_batch_size: int = 256
    log_interval: int = 50


register_section_schema("solver", None, SolverConfig, choices={"optimizer": ("sgd", "adam")},
                        key_checks={"sampler": lambda v: check_sampler("solver.sampler", v)})
