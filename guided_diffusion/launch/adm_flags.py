"""ADM's command-line flags (guided-diffusion's ``scripts/*.py``) as aliases of config keys.

A guided-diffusion user types ``--num_channels 128 --timestep_respacing 250 --batch_size 32``; each
flag here maps to the config key that means the same thing, and ``--dry-run`` shows the result.
Where ADM's meaning is not a plain key, a translation says so:

- ``--batch_size B`` on the training scripts is ADM's *per-process* batch: the config's global
  ``train.batch_size`` (``classifier.batch_size``) becomes B x the number of processes.
- ``--use_fp16 True`` trains in fp16 with a loss scaler (``train.precision=fp16``), as ADM does.
- ``--lr_anneal_steps N`` anneals the learning rate linearly to 0 over N steps and stops there
  (``train.total_steps=N``, ``train.lr_schedule=linear``); N = 0 (ADM: train forever) is refused.
- ``--resume_checkpoint P`` resumes as ADM does (``model.init_path``, then ``runtime/adm_resume.py``): the
  weights of P, and the step (P named ``model{step}.pt``), the optimizer (``opt{step}.pt``) and the EMA
  (``ema_{rate}_{step}.pt``) from the files beside it when they are there; weights only otherwise (the
  log says which). A run of this project resumes by rerunning its command (its own run folder wins).
- ``--timestep_respacing`` and ``--use_ddim`` on the sampling scripts (and GUIDE's classifier phase) are
  together one sampler value, ``sample.sampler`` (``solver.sampler``), by ADM's rule
  (``sampling.config.adm_sampler``): ``--timestep_respacing 250`` is ``250`` (250 ancestral steps),
  ``ddim50`` is DDIM, ``--use_ddim True --timestep_respacing ""`` is ``ddim1000`` (DDIM over every step),
  ``--use_ddim False --timestep_respacing ddim10t`` is ``10t``; a pair that no value stands for (DDIM on
  ADM's even spacing ``250``) is refused with the two nearest. ``--dry-run`` shows the value. On the
  training scripts ``--timestep_respacing`` is the training diffusion's, as in ADM.

ADM flags without an equivalent here (``--fp16_scale_growth``, ``--val_data_dir``) fail with a line
that says so, never silently.

GUIDE (cywinski/guide, its README's commands) is an ADM fork whose classifier phase is ``image_train.py
--train_with_disjoint_classifier True``; its flags are accepted by ``classifier_cl_train.py`` (kind
``guide_classifier``): ``--classifier_lr 0.01 --guid_generation_interval 5 ...`` set the ``solver``
keys. Its true/false flags are read as its ``str2bool`` reads them (yes/true/t/y/1, no/false/f/n/0).
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Sequence, Tuple, Union

from ..runtime.config import ConfigError, parse_bool

# model_and_diffusion_defaults(): every script that builds the UNet.
MODEL_FLAGS: Dict[str, str] = {
    "image_size": "data.image_size",
    "num_channels": "model.num_channels",
    "num_res_blocks": "model.num_res_blocks",
    "num_heads": "model.num_heads",
    "num_heads_upsample": "model.num_heads_upsample",
    "num_head_channels": "model.num_head_channels",
    "attention_resolutions": "model.attention_resolutions",
    "channel_mult": "model.channel_mult",
    "dropout": "model.dropout",
    "class_cond": "model.class_cond",
    "use_checkpoint": "model.use_checkpoint",
    "use_scale_shift_norm": "model.use_scale_shift_norm",
    "resblock_updown": "model.resblock_updown",
    "use_new_attention_order": "model.use_new_attention_order",
    "learn_sigma": "diffusion.learn_sigma",
    "diffusion_steps": "diffusion.diffusion_steps",
    "noise_schedule": "diffusion.noise_schedule",
    "use_kl": "diffusion.use_kl",
    "predict_xstart": "diffusion.predict_xstart",
    "rescale_timesteps": "diffusion.rescale_timesteps",
    "rescale_learned_sigmas": "diffusion.rescale_learned_sigmas",
}

# classifier_defaults() (the prefix dropped in the config) and classifier_train.py's flags.
CLASSIFIER_FLAGS: Dict[str, str] = {
    "image_size": "data.image_size",
    "classifier_width": "classifier.width",
    "classifier_depth": "classifier.depth",
    "classifier_attention_resolutions": "classifier.attention_resolutions",
    "classifier_use_scale_shift_norm": "classifier.use_scale_shift_norm",
    "classifier_resblock_updown": "classifier.resblock_updown",
    "classifier_pool": "classifier.pool",
    "classifier_use_fp16": "classifier.use_fp16",
    "noised": "classifier.noised",
    "iterations": "classifier.iterations",
    "lr": "classifier.lr",
    "weight_decay": "classifier.weight_decay",
    "anneal_lr": "classifier.anneal_lr",
    "microbatch": "train.microbatch",
    "schedule_sampler": "train.schedule_sampler",
    "log_interval": "classifier.log_interval",
    "eval_interval": "classifier.eval_interval",
    "save_interval": "classifier.save_interval",
    "data_dir": "data.data_dir",
    "learn_sigma": "diffusion.learn_sigma",
    "diffusion_steps": "diffusion.diffusion_steps",
    "noise_schedule": "diffusion.noise_schedule",
    "timestep_respacing": "diffusion.timestep_respacing",
}

# image_train.py's create_argparser() besides the model's.
TRAIN_FLAGS: Dict[str, str] = {
    "data_dir": "data.data_dir",
    "schedule_sampler": "train.schedule_sampler",
    "lr": "train.lr",
    "weight_decay": "train.weight_decay",
    "microbatch": "train.microbatch",
    "ema_rate": "train.ema_rate",
    "log_interval": "train.log_interval",
    "save_interval": "train.save_interval",
    "timestep_respacing": "diffusion.timestep_respacing",
}

class SamplerFlag:
    """One of ADM's two sampler flags, ``--timestep_respacing`` (``part`` "respacing") and ``--use_ddim``
    ("use_ddim"): together the one sampler value ``key``, by ADM's rule (``sampling.config.adm_sampler``),
    once every flag is read (``launch.cli.parse``; the flag left out: the config's value, use_ddim unset)."""

    def __init__(self, key: str, part: str):
        self.key, self.part = key, part
        self.__doc__ = (f"{key}, with --{'use_ddim' if part == 'respacing' else 'timestep_respacing'} by ADM's rule "
                        "(--dry-run shows it): ddimN is DDIM, N ancestral; --use_ddim True with \"\" is ddim1000 (every "
                        "step), with Nt ddimNt; --use_ddim False with ddimNt is Nt")


def sampler_flags(key: str) -> Dict[str, "SamplerFlag"]:
    """ADM's ``--timestep_respacing`` and ``--use_ddim`` as the sampler value ``key``."""
    return {"timestep_respacing": SamplerFlag(key, "respacing"), "use_ddim": SamplerFlag(key, "use_ddim")}


def sampler_value(key: str, given: Dict[str, str], tree: Dict, steps: int, default: str) -> str:
    """The value of the sampler ``key`` for ADM's flags ``given`` ({part: the flag's value}) over the
    settings ``tree``: the respacing flag, else the tree's (or ``default``), with the use_ddim flag (GUIDE's
    str2bool), by ADM's rule over ``steps`` diffusion steps."""
    from ..sampling.config import NoSamplerValue, adm_sampler

    section, name = key.split(".", 1)
    part = tree.get(section) if isinstance(tree.get(section), dict) else {}
    respacing = given["respacing"] if "respacing" in given else str(part.get(name, default))
    use_ddim = _str2bool("use_ddim", given["use_ddim"]) if "use_ddim" in given else None
    try:
        return adm_sampler(respacing, use_ddim, steps)
    except NoSamplerValue as e:
        raise ConfigError(f"{e.what} have no sampler value here: give "
                          + " or ".join(f"--timestep_respacing {v} ({n})" for v, n in e.choices)
                          + " without --use_ddim") from None


# image_sample.py / classifier_sample.py besides the model's.
SAMPLE_FLAGS: Dict[str, Union[str, SamplerFlag]] = {
    "model_path": "sample.model_path",
    "num_samples": "sample.num_samples",
    "batch_size": "sample.batch_size",
    **sampler_flags("sample.sampler"),
    "clip_denoised": "sample.clip_denoised",
    "classifier_path": "sample.classifier_path",
    "classifier_scale": "sample.classifier_scale",
    "use_fp16": "model.use_fp16",
}

NO_EQUIVALENT = {
    "fp16_scale_growth": "the fp16 loss scaler here is torch's GradScaler with its default growth",
    "val_data_dir": "the validation split comes from the data set (data.test_dir for image folders and npz)",
}

Translation = Callable[[str, int], List[str]]

# GUIDE's continual flags on its image_train.py (cywinski/guide: its README's commands) -> continual keys.
GUIDE_TRAIN_FLAGS: Dict[str, str] = {
    "num_tasks": "continual.num_tasks",
    "num_steps": "continual.num_steps",
    "first_task_num_steps": "continual.first_task_num_steps",
    "first_task_num_classes": "continual.first_task_num_classes",
    "limit_tasks": "continual.limit_tasks",
    "gr_n_generated_examples_per_task": "method.n_per_task",
    "wandb_experiment_name": "name",
    "wandb_project_name": "train.wandb",
}

# GUIDE's data set names -> this project's (each reads its files from data.data_dir).
GUIDE_DATASETS = {"mnist": "mnist", "fashionmnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}

# GUIDE's training flags that are not one key here: refused with the key or the file that does it.
GUIDE_REFUSED = {
    "cl_method": "the method is the config's method section: --config yaml/<benchmark>/<method>.yaml "
                 "(yaml/guide/ holds GUIDE's) or method.name=generative_replay|generative_distillation|...",
    "train_with_disjoint_classifier": "GUIDE's classifier phase is scripts/classifier_cl_train.py (its flags are GUIDE's)",
    "wandb_entity": "W&B takes the entity from $WANDB_ENTITY (train.wandb=<project> turns W&B on)",
    "train_aug": "set data.random_flip=true (GUIDE's train_aug: random flips)",
    "use_task_index": "the label is the class here (model.class_cond=true); tasks come from the continual section",
    "plot_interval": "each task ends with a grid (continual.grid_per_class)",
    "skip_validation": "the per-task evaluation is the evaluation section (leave it out: none)",
    "use_ddim": "GUIDE's replay sampler is method.sampler, one value by ADM's rule (--timestep_respacing 1000 "
                "--use_ddim False: method.sampler=1000; ddim50 with --use_ddim True: method.sampler=ddim50); "
                "--timestep_respacing on a training script is the training diffusion's, as in ADM",
}


def _guide_dataset(value: str, world_size: int) -> List[str]:
    name = GUIDE_DATASETS.get(str(value).replace("-", "").replace("_", "").lower())
    if name is None:
        raise ConfigError(f"--dataset {value}: GUIDE's data sets here are {', '.join(GUIDE_DATASETS.values())} "
                          "(data.dataset=...; a folder of images: --data_dir DIR)")
    return [f"data.dataset={name}"]


_guide_dataset.__doc__ = ("data.dataset (GUIDE's names: MNIST, FashionMNIST, CIFAR10, CIFAR100; their files from "
                          "data.data_dir)")


def _per_process_batch(key: str) -> Translation:
    def translate(value: str, world_size: int) -> List[str]:
        return [f"{key}={int(value) * max(1, world_size)}"]

    translate.__doc__ = f"{key} = B x processes (ADM's batch is per process)"
    return translate


def _use_fp16(value: str, world_size: int) -> List[str]:
    on = _str2bool("use_fp16", value)  # ADM's str2bool: t, y, 1, ... as well
    return ["model.use_fp16=" + ("true" if on else "false")] + (["train.precision=fp16"] if on else [])


_use_fp16.__doc__ = "model.use_fp16 and, when true, train.precision=fp16 (ADM's fp16 training)"


def _lr_anneal_steps(value: str, world_size: int) -> List[str]:
    n = int(float(value))
    if n <= 0:
        raise ConfigError("--lr_anneal_steps 0 means 'train forever' in ADM: set the length with "
                          "train.total_steps=N (and --lr_anneal_steps N for a linear decay to 0)")
    return [f"train.total_steps={n}", "train.lr_schedule=linear"]


_lr_anneal_steps.__doc__ = "train.total_steps=N and train.lr_schedule=linear (ADM: linear decay to 0, stop at N)"


def _resume_checkpoint(value: str, world_size: int) -> List[str]:
    return [f"model.init_path={value}"]


_resume_checkpoint.__doc__ = ("model.init_path, and ADM's step, opt{step}.pt and ema_{rate}_{step}.pt beside it when "
                              "present (IID training; a run of this project resumes by rerunning its command)")

Target = Union[str, Translation, SamplerFlag]


# ----------------------------------------------------------------------------------------------
# GUIDE's classifier phase (scripts/image_train.py --train_with_disjoint_classifier True)

# GUIDE's --classifier_augmentation True: kornia RandomCrop(pad 4), RandomRotation(30), RandomHorizontalFlip,
# ColorJiggle, RandomErasing (GUIDE's classifier augmentations), here the solver's augment kinds of the same names.
GUIDE_AUGMENT = "crop,rotation,flip,jitter,erasing"

_GUIDE_TRUE = ("yes", "true", "t", "y", "1", "on")
_GUIDE_FALSE = ("no", "false", "f", "n", "0", "off")


def _guide_bool(flag: str, key: str) -> Translation:
    def translate(value: str, world_size: int) -> List[str]:
        return [f"{key}={'true' if _str2bool(flag, value) else 'false'}"]

    translate.__doc__ = f"{key} (true/false, GUIDE's str2bool)"
    return translate


def _str2bool(flag: str, value: str) -> bool:
    """GUIDE's ``str2bool``: yes/true/t/y/1 or no/false/f/n/0, any case (on/off too, as configs)."""
    text = str(value).strip().lower()
    if text in _GUIDE_TRUE:
        return True
    if text in _GUIDE_FALSE:
        return False
    raise ConfigError(f"--{flag} expects true or false (GUIDE's str2bool: yes/true/t/y/1, no/false/f/n/0), "
                      f"got {value!r}")


def _guide_scales() -> Dict[str, Translation]:
    """``--classifier_scale_{min,max}_{old,new}``: solver.guided.scale_min / scale_max. GUIDE keeps a range
    per gradient but guides with one at a time (use_old_grad or use_new_grad), so one range serves
    both here (``check_guide_flags`` refuses _old and _new that differ). As GUIDE's
    ``preprocess_args``: a bound given alone stands for both (min 0.5 alone: the range [0.5, 0.5]);
    a later flag for the other bound replaces the copy. State per table (one ``flags_for`` call)."""
    given: set = set()

    def make(bound: str, family: str) -> Translation:
        other = "max" if bound == "min" else "min"

        def translate(value: str, world_size: int) -> List[str]:
            words = [f"solver.guided.scale_{bound}={value}"]
            if other not in given:  # GUIDE: min alone -> max = min (and the reverse)
                words.append(f"solver.guided.scale_{other}={value}")
            given.add(bound)
            return words

        translate.__doc__ = (f"solver.guided.scale_{bound} (GUIDE's {family} range; alone, also "
                             f"solver.guided.scale_{other}, as GUIDE); one range serves _old and _new")
        return translate

    return {f"classifier_scale_{b}_{f}": make(b, f) for b in ("min", "max") for f in ("old", "new")}


def _guide_augmentation(value: str, world_size: int) -> List[str]:
    on = _str2bool("classifier_augmentation", value)
    return [f"solver.augment={GUIDE_AUGMENT if on else ''}"]


_guide_augmentation.__doc__ = f"solver.augment: true = {GUIDE_AUGMENT} (GUIDE's kornia set), false = none"


def _guide_depth(value: str, world_size: int) -> List[str]:
    if str(value).strip() != "18":
        raise ConfigError(f"--depth {value}: the solver's ResNet here is GUIDE's default ResNet-18 only "
                          "(--depth 18, solver.arch=resnet18); other depths are not built")
    return ["solver.arch=resnet18"]


_guide_depth.__doc__ = "solver.arch=resnet18 (GUIDE's ResNet depth; only 18 is built)"


def _guide_batch(value: str, world_size: int) -> List[str]:
    return [f"solver.batch_size={int(value)}"]


_guide_batch.__doc__ = ("solver.batch_size = B: GUIDE's batch is per process and the solver runs in one process, "
                        "so B is the whole batch (task i: B/(i+1) real + B*i/(i+1) replay images, as GUIDE)")


def _guide_pretrained_dir(value: str, world_size: int) -> List[str]:
    return [f"solver.diffusion_run={value}"]


_guide_pretrained_dir.__doc__ = ("solver.diffusion_run: the run folder of this project's continual diffusion run "
                                 "(scripts/continual_train.py), whose task_k/ EMA weights replay task k "
                                 "(GUIDE's folder of ema_*_{task}.pt files is not read)")


def guide_classifier_flags() -> Dict[str, Target]:
    """GUIDE's classifier-phase flags (cywinski/guide's README commands) -> solver keys. The
    diffusion model's flags (``--num_channels``, ``--embedding_kind``, ...) describe the model that
    replays, as in GUIDE's command. The README's other flags (--dataset, --num_tasks, --cl_method,
    --train_with_disjoint_classifier, --wandb_*) are not taken: ``--config yaml/guide/<benchmark>.yaml``
    sets the data and the scenario."""
    table: Dict[str, Target] = {**MODEL_FLAGS, "embedding_kind": "model.embedding_kind", "seed": "seed",
                                "log_interval": "solver.log_interval"}
    table.update(_guide_scales())
    for flag, key in (("use_old_grad", "solver.guided.use_old_grad"), ("use_new_grad", "solver.guided.use_new_grad"),
                      ("guid_to_new_classes", "solver.guided.guid_to_new_classes"),
                      ("negate_old_grad", "solver.guided.negate_old_grad"), ("trim_logits", "solver.trim_logits"),
                      ("train_noised_classifier", "solver.guided.noised_classifier")):
        table[flag] = _guide_bool(flag, key)
    for flag in ("class_cond", "use_checkpoint", "use_scale_shift_norm", "resblock_updown",
                 "use_new_attention_order", "learn_sigma", "use_kl", "predict_xstart", "rescale_timesteps",
                 "rescale_learned_sigmas"):  # the model's true/false flags, read by GUIDE's str2bool too
        table[flag] = _guide_bool(flag, MODEL_FLAGS[flag])
    table.update({
        "disjoint_classifier_init_num_steps": "solver.init_num_steps",
        "disjoint_classifier_num_steps": "solver.num_steps",
        "classifier_init_lr": "solver.init_lr",
        "classifier_lr": "solver.lr",
        "classifier_weight_decay": "solver.weight_decay",
        "guid_generation_interval": "solver.generation_interval",
        **sampler_flags("solver.sampler"),  # the replay sampler (GUIDE: ddim50 / ddim100 with --use_ddim True)
        "classifier_augmentation": _guide_augmentation,
        "depth": _guide_depth,
        "batch_size": _guide_batch,  # GUIDE's batch is per process; the solver is one process: the whole batch
        "diffusion_pretrained_dir": _guide_pretrained_dir,
    })
    return table


def check_guide_flags(cfg, translations: Sequence[Tuple[str, List[str]]]) -> None:
    """What GUIDE refuses, or one range cannot hold, after the flags (``args.translations``) are read:
    ``--classifier_scale_*_old`` and ``*_new`` that give different ranges (one range serves both here;
    each family's range as GUIDE completes it), and both gradients on (GUIDE: NotImplementedError)."""
    given = [(name.lstrip("-").replace("-", "_"), value) for name, _, value in
             (flag.partition(" ") for flag, _ in translations)]
    ranges: Dict[str, Dict[str, float]] = {}
    for name, value in given:
        m = re.fullmatch(r"classifier_scale_(min|max)_(old|new)", name)
        if m:
            ranges.setdefault(m.group(2), {})[m.group(1)] = float(value)
    if len(ranges) == 2:
        full = {fam: (b.get("min", b.get("max")), b.get("max", b.get("min"))) for fam, b in ranges.items()}
        if full["old"] != full["new"]:
            raise ConfigError(
                f"--classifier_scale_*_old gives the range {list(full['old'])} and --classifier_scale_*_new "
                f"{list(full['new'])}: GUIDE guides with one gradient at a time, and here one range "
                "(solver.guided.scale_min, scale_max) serves both; give the scales of the gradient you use")
    grads = {name for name, _ in given} & {"use_old_grad", "use_new_grad"}
    if cfg.solver.guided.use_old_grad and cfg.solver.guided.use_new_grad and grads:
        raise ConfigError("solver.guided.use_old_grad and use_new_grad are both true: GUIDE refuses both gradients "
                          "(NotImplementedError); add --use_new_grad False (the presets and the default set it true) "
                          "or --use_old_grad False")


def flags_for(kind: str) -> Dict[str, Target]:
    """The ADM flags of a script kind: ``train`` (image_train.py and the continual trainers),
    ``sample`` (image_sample.py), ``classifier`` (classifier_train.py), ``guide_classifier``
    (classifier_cl_train.py: GUIDE's classifier-phase flags, ``guide_classifier_flags``)."""
    if kind == "train":
        table: Dict[str, Target] = {**MODEL_FLAGS, **TRAIN_FLAGS}
        table.update(batch_size=_per_process_batch("train.batch_size"), use_fp16=_use_fp16,
                     lr_anneal_steps=_lr_anneal_steps, resume_checkpoint=_resume_checkpoint)
        table.update(GUIDE_TRAIN_FLAGS, dataset=_guide_dataset)  # GUIDE's image_train.py (an ADM fork) too
        return table
    if kind == "sample":  # image_sample.py and classifier_sample.py: the classifier's architecture too
        arch = {k: v for k, v in CLASSIFIER_FLAGS.items() if k.startswith("classifier_")}
        return {**MODEL_FLAGS, **arch, **SAMPLE_FLAGS}
    if kind == "classifier":
        table = dict(CLASSIFIER_FLAGS)
        table.update(batch_size=_per_process_batch("classifier.batch_size"))
        return table
    if kind == "guide_classifier":
        return guide_classifier_flags()
    raise ValueError(f"unknown script kind {kind!r}: train, sample, classifier or guide_classifier")


def describe(target: Target) -> str:
    """What a flag sets, in one line (for --help)."""
    return target if isinstance(target, str) else (target.__doc__ or "")


# ADM's defaults of its sampler flags (``--timestep_respacing ""``, ``--use_ddim False``): every step, ancestral.
ADM_SAMPLER_DEFAULT = ""


# The kinds of ADM's own scripts (image_train, image_sample / classifier_sample, classifier_train),
# whose flags left out take ADM's defaults (``adm_defaults``); GUIDE's classifier phase is not one.
ADM_SCRIPTS = ("train", "sample", "classifier")


def adm_defaults(kind: str) -> List[str]:
    """ADM's defaults for the flags of ``kind`` that the config's own defaults do not share, as
    ``key=value`` overrides: what a run typed with ADM's flags and no ``--config`` starts from, so that
    a flag left out means what it means in guided-diffusion (``--num_channels`` left out: 128, not this
    project's 64). The values are ADM's table, ``script_util.model_and_diffusion_defaults`` (and
    ``classifier_defaults`` for the classifier's flags), and for training ADM's TrainLoop's math (no
    gradient clipping, a constant EMA rate); ADM's scripts' own argparse defaults (``--batch_size`` 1,
    ``--lr_anneal_steps`` 0: forever, ...) are not in it and keep the config's (``train.total_steps``)."""
    from ..runtime.config import Config, to_dict
    from ..script_util import classifier_defaults, model_and_diffusion_defaults

    adm = {**model_and_diffusion_defaults(), **classifier_defaults()}
    ours = to_dict(Config())
    out = []
    if kind == "train":  # ADM's TrainLoop: no gradient clipping, a constant EMA rate (no warm-up)
        out += ["train.grad_clip=0", "train.ema_warmup=false"]
    for flag, key in flags_for(kind).items():
        if isinstance(key, SamplerFlag) and key.part == "respacing":  # ADM's "" and False: every step, ancestral
            section, name = key.key.split(".", 1)
            if str(ours.get(section, {}).get(name)) != ADM_SAMPLER_DEFAULT:
                out.append(f"{key.key}={ADM_SAMPLER_DEFAULT}")
            continue
        if not isinstance(key, str) or flag not in adm:
            continue
        section, name = key.split(".", 1)
        value = adm[flag]
        if str(value).lower() != str(ours.get(section, {}).get(name)).lower():
            out.append(f"{key}={value}")
    return out


def translate(value: str, target: Target, world_size: int) -> List[str]:
    """The ``key=value`` overrides that a flag with ``target`` (its ``flags_for`` entry) and ``value`` stands
    for (a ``SamplerFlag`` is translated with its partner, by ``sampler_value``)."""
    if isinstance(target, SamplerFlag):
        raise ValueError("a sampler flag is translated with its partner (sampler_value)")
    if isinstance(target, str):
        return [f"{target}={value}"]
    return target(value, world_size)
