"""ADM's command-line flags (guided-diffusion's ``scripts/*.py``) as aliases of config keys.

A guided-diffusion user types ``--num_channels 128 --timestep_respacing 250 --batch_size 32``; each
flag here maps to the config key that means the same thing, and ``--dry-run`` shows the result.
Where ADM's meaning is not a plain key, a translation says so:

- ``--batch_size B`` on the training scripts is ADM's *per-process* batch: the config's global
  ``train.batch_size`` (``classifier.batch_size``) becomes B x the number of processes.
- ``--use_fp16 True`` trains in fp16 with a loss scaler (``train.precision=fp16``), as ADM does.
- ``--lr_anneal_steps N`` anneals the learning rate linearly to 0 over N steps and stops there
  (``train.total_steps=N``, ``train.lr_schedule=linear``); N = 0 (ADM: train forever) is refused.
- ``--resume_checkpoint P`` starts training from the weights in P (``model.init_path``); a run of
  this project resumes by rerunning its command (its run folder holds the optimizer and the step).
- ``--timestep_respacing`` is the sampler's respacing on the sampling scripts and the training
  diffusion's on the training scripts, as in ADM.

ADM flags without an equivalent here (``--fp16_scale_growth``, ``--val_data_dir``) fail with a line
that says so, never silently.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Union

from .config import ConfigError, parse_bool

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

# image_sample.py / classifier_sample.py besides the model's.
SAMPLE_FLAGS: Dict[str, str] = {
    "model_path": "sample.model_path",
    "num_samples": "sample.num_samples",
    "batch_size": "sample.batch_size",
    "use_ddim": "sample.use_ddim",
    "timestep_respacing": "sample.timestep_respacing",
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


def _per_process_batch(key: str) -> Translation:
    def translate(value: str, world_size: int) -> List[str]:
        return [f"{key}={int(value) * max(1, world_size)}"]

    translate.__doc__ = f"{key} = B x processes (ADM's batch is per process)"
    return translate


def _use_fp16(value: str, world_size: int) -> List[str]:
    on = parse_bool(value, "--use_fp16")
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


_resume_checkpoint.__doc__ = ("model.init_path: start from these weights (a run of this project resumes by "
                              "rerunning its command)")

Target = Union[str, Translation]


def flags_for(kind: str) -> Dict[str, Target]:
    """The ADM flags of a script kind: ``train`` (image_train.py and the continual trainers),
    ``sample`` (image_sample.py), ``classifier`` (classifier_train.py)."""
    if kind == "train":
        table: Dict[str, Target] = {**MODEL_FLAGS, **TRAIN_FLAGS}
        table.update(batch_size=_per_process_batch("train.batch_size"), use_fp16=_use_fp16,
                     lr_anneal_steps=_lr_anneal_steps, resume_checkpoint=_resume_checkpoint)
        return table
    if kind == "sample":  # image_sample.py and classifier_sample.py: the classifier's architecture too
        arch = {k: v for k, v in CLASSIFIER_FLAGS.items() if k.startswith("classifier_")}
        return {**MODEL_FLAGS, **arch, **SAMPLE_FLAGS}
    if kind == "classifier":
        table = dict(CLASSIFIER_FLAGS)
        table.update(batch_size=_per_process_batch("classifier.batch_size"))
        return table
    raise ValueError(f"unknown script kind {kind!r}: train, sample or classifier")


def describe(target: Target) -> str:
    """What a flag sets, in one line (for --help)."""
    return target if isinstance(target, str) else (target.__doc__ or "")


def translate(value: str, target: Target, world_size: int) -> List[str]:
    """The ``key=value`` overrides that a flag with ``target`` (its ``flags_for`` entry) and ``value`` stands for."""
    if isinstance(target, str):
        return [f"{target}={value}"]
    return target(value, world_size)
