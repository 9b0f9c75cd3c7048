"""Build the pieces of an experiment from a Config: run folder, logger, data, model, diffusion.

Scripts and the continual loop call these so that every program builds things the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import blobfile as bf
import numpy as np
import torch

from .data import load_dataset, subset_by_classes, to_tensor
from .models.diffusers_unet import DiffusersUNet, load_diffusers_unet
from .models.energy import EnergyModel
from .models.prompts import PromptConditioned
from .models.vae import MlpVAE, VAEObjective
from .pretrained.latent import LatentCodec
from .pretrained.text_encoder import class_prompts, encode_prompts, text_width
from .runtime import dist_util
from .runtime.checkpoint import atomic_write_text
from .runtime.config import Config, ConfigError, dump_config, to_dict
from .runtime.logger import Logger
from .runtime.precision import Precision, describe_cpu
from .runtime.precision import resolve as resolve_precision
from .sampling.classifier_free import null_class_of
from .sampling.config import is_ddim
from .sampling.sample_sets import SamplingSpec
from .script_util import create_classifier, create_gaussian_diffusion, create_model
from .train_util import DiffusionObjective


@dataclass
class DataInfo:
    num_classes: int
    channels: int
    image_size: int
    class_names: tuple = ()  # the data set's own names of its classes (a task dict's text labels), if any
    task_classes: tuple = ()  # per task of the data set itself (a task dict's keys, in order): its classes

    @property
    def shape(self):
        return (self.channels, self.image_size, self.image_size)


def run_dir_of(cfg: Config) -> str:
    return bf.join(cfg.out_dir, cfg.name)


def precision_of(cfg: Config, device=None) -> Precision:
    """The run's compute precision on ``device`` (default: the process's): ``train.precision`` and
    ``train.memory_format`` resolved by ``runtime.precision.resolve``; the VAE generator trains in fp32.
    Training (``TrainLoop``) and every sample set of the run (``sampling_spec``) use it."""
    if cfg.generator == "vae":
        return Precision(reason="generator: vae trains in fp32")
    return resolve_precision(cfg.train.precision, cfg.train.memory_format, device or cfg.device or dist_util.dev())


def init_process(cfg: Config) -> torch.device:
    """Threads, distribution and device for this process."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    dist_util.init(backend=cfg.dist.backend or None, timeout_s=cfg.dist.timeout_s)
    if cfg.device:
        return torch.device(cfg.device)
    return dist_util.dev()


def setup_run(cfg: Config, run_dir: Optional[str] = None, config_name: str = "config.yaml") -> Logger:
    """Create the run folder, save the resolved config (rank 0), return the rank's logger."""
    run_dir = run_dir or run_dir_of(cfg)
    if dist_util.is_main():
        bf.makedirs(run_dir)
        atomic_write_text(bf.join(run_dir, config_name), dump_config(cfg))
    dist_util.barrier()
    return make_logger(cfg, run_dir)


def check_inputs(cfg: Config) -> None:
    """What a training run reads, checked before its run folder is made (and by ``--dry-run``): the data
    set's folder or file, ``model.init_path``, and the optional logging packages it asks for."""
    import importlib.util

    from .data.datasets import DATASETS

    d = cfg.data
    spec = DATASETS.get(d.dataset)
    if spec is not None and spec.needs_dir and not d.data_dir:
        raise ConfigError(f"data.dataset {d.dataset!r} needs data.data_dir (--data_dir): {spec.layout}")
    if spec is not None and not spec.needs_dir and d.data_dir:
        raise ConfigError(f"data.dataset {d.dataset!r} needs no data.data_dir (got {d.data_dir!r}); for a folder of "
                          "images set data.dataset=image_folder (an .npz: npz), as ADM's --data_dir alone does")
    for key, path in (("data.data_dir", d.data_dir), ("data.test_dir", d.test_dir),
                      ("model.init_path", cfg.model.init_path)):
        if path and not bf.exists(path):
            raise FileNotFoundError(f"{key} = {path!r}: no such file or folder")
    for key, on, package in (("train.wandb", cfg.train.wandb, "wandb"), ("train.tensorboard", cfg.train.tensorboard,
                                                                           "tensorboard")):
        if on and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{key} is set but the {package} package is not installed: pip install {package} "
                              f"(or guided-diffusion-cl[log]), or unset {key}")


# Keys a rerun may change without starting another run: where and how it runs and logs, and what only
# other scripts read (sampling, the classifiers); anything else changes what the run computes.
_RERUN_FREE = ("out_dir", "device", "dist.", "train.num_threads", "train.log_interval", "train.save_interval",
               "train.keep_checkpoints", "train.wandb", "train.tensorboard", "train.compile", "train.sample_at_end",
               "continual.limit_tasks", "continual.grid_per_class", "model.init_path", "sample.", "classifier.",
               "solver.", "evaluation.")


def _flat(tree: dict, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_dir(cfg: Config, force: bool = False) -> None:
    """A run folder holds one run: a command whose config differs from the ``config.yaml`` there (another
    method, other data or training) is refused, naming the difference, unless ``force``. Rerunning the
    same command resumes; the keys of ``_RERUN_FREE`` (threads, logging, limit_tasks, ...) may change."""
    from .runtime.config import load_config

    path = bf.join(run_dir_of(cfg), "config.yaml")
    if force or not bf.exists(path):
        return
    hint = f"choose another name (name=<new>) for a new run, or add --force to continue {run_dir_of(cfg)} with this config"
    try:
        old = load_config(path, record=True)  # what that run saved (keys since replaced read as their successors)
    except ConfigError as e:
        raise ConfigError(f"{path} (the run already there) no longer loads ({e}); {hint}") from None
    was, now = _flat(to_dict(old)), _flat(to_dict(cfg))
    diff = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)
            and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in _RERUN_FREE)]
    if not diff:
        return
    method = [k for k in diff if k.startswith("method.")]
    first = "method.name" if "method.name" in diff else (method or diff)[0]
    shown = ", ".join(f"{k}: {was.get(k, '(unset)')!r} there, {now.get(k, '(unset)')!r} here" for k in
                      [first] + [k for k in diff if k != first][:2])
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    raise ConfigError(f"{run_dir_of(cfg)} holds another run: {shown}{more}; {hint}")


# Files a run folder holds before its first checkpoint: a failed start that left only these is removed.
_START_FILES = ("log.txt", "progress.csv", "progress.jsonl", "config.yaml", "wandb_id.txt", "metrics.csv")


def _has_rows(path: str) -> bool:
    """A progress/metrics file that recorded training (more than its header): never removed."""
    if not path.endswith((".csv", ".jsonl")):
        return False
    with open(path, "rb") as f:
        return sum(1 for _ in f) > (0 if path.endswith(".jsonl") else 1)


@contextlib.contextmanager
def fresh_run_dir(cfg: Config):
    """Around a run: if it fails on its input (a config, data or checkpoint error) and the run folder
    did not exist before, the folder it made is removed, as long as it holds only start-up files (logs,
    the config, no progress row): a failed start leaves no ``experiments/<name>/`` behind. Never removes a
    checkpoint or a log of training steps."""
    from .runtime.checkpoint import CheckpointError

    run_dir = run_dir_of(cfg)
    existed, out_existed = bf.exists(run_dir), bf.exists(cfg.out_dir)
    try:
        yield run_dir
    except (ConfigError, ValueError, FileNotFoundError, ImportError, CheckpointError):
        if not existed and dist_util.is_main() and "://" not in run_dir and os.path.isdir(run_dir):
            files = [os.path.join(d, f) for d, _, names in os.walk(run_dir) for f in names]
            if all(os.path.basename(f) in _START_FILES for f in files) and not any(_has_rows(f) for f in files):
                shutil.rmtree(run_dir, ignore_errors=True)
                if not out_existed and os.path.isdir(cfg.out_dir) and not os.listdir(cfg.out_dir):
                    os.rmdir(cfg.out_dir)
        raise


def make_logger(cfg: Config, run_dir: str) -> Logger:
    """CSV/JSONL/log.txt always; wandb and tensorboard when the config asks (imported lazily)."""
    wandb = None
    if cfg.train.wandb:  # one W&B run for the run folder, its tasks' loggers included (logger._WandbSink)
        from .runtime.logger import stable_run_id

        root = run_dir_of(cfg)
        wandb = {"project": cfg.train.wandb, "name": cfg.name, "config": to_dict(cfg)}
        if dist_util.is_main() and "://" not in root:  # rank 0 alone logs (and owns wandb_id.txt)
            os.makedirs(root, exist_ok=True)
            wandb.update(dir=root, id=stable_run_id(root), resume="allow")
    return Logger(run_dir, rank=dist_util.get_rank(), wandb=wandb, tensorboard=cfg.train.tensorboard)


def _load_arrays(cfg: Config, split: str):
    d = cfg.data
    opts = dict(test_dir=d.test_dir or None, allow_pickle=d.allow_pickle)
    if d.dataset == "image_folder":  # a folder of mixed sizes is resized to the model's size on reading
        opts["image_size"] = d.image_size
    return load_dataset(d.dataset, data_dir=d.data_dir or None, split=split, **opts)


def load_split(cfg: Config, split: str = "train", classes: Optional[Sequence[int]] = None):
    """The dataset of ``cfg.data`` as model tensors: (x float [-1,1] NCHW, y int64, DataInfo)."""
    arrays = _load_arrays(cfg, split)
    d = cfg.data
    if cfg.model.num_classes and cfg.model.num_classes < arrays.num_classes:
        raise ConfigError(
            f"model.num_classes = {cfg.model.num_classes} but dataset '{d.dataset}' has "
            f"{arrays.num_classes} classes"
        )
    tasks = () if arrays.task_ids is None else tuple(
        tuple(int(c) for c in np.unique(arrays.labels[arrays.task_ids == t])) for t in np.unique(arrays.task_ids))
    if classes is not None:
        arrays = subset_by_classes(arrays, classes)
    channels = d.channels or arrays.images.shape[-1]
    x = to_tensor(arrays, d.image_size, channels, resize=d.resize)
    y = torch.as_tensor(arrays.labels, dtype=torch.long)
    return x, y, DataInfo(arrays.num_classes, channels, d.image_size, tuple(arrays.class_names), tasks)


_CODECS: Dict[str, LatentCodec] = {}


def latent_codec(cfg: Config) -> Optional[LatentCodec]:
    """The autoencoder stage of ``latent.autoencoder`` (loaded once per process), or None (pixels)."""
    path = cfg.latent.autoencoder
    if not path:
        return None
    if path not in _CODECS:
        try:
            _CODECS[path] = LatentCodec(path)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    return _CODECS[path]


def model_info(cfg: Config, info: DataInfo) -> DataInfo:
    """What the network sees: the data's shape, or (latent diffusion) the autoencoder's latents'."""
    codec = latent_codec(cfg)
    if codec is None:
        return info
    try:
        c, h, _ = codec.latent_shape(info.channels, info.image_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return dataclasses.replace(info, channels=c, image_size=h)  # the classes and tasks are the data's


def to_model_space(cfg: Config, x: torch.Tensor, info: DataInfo, split: str = "train"):
    """(x, info) as the network trains on them: the images, or their latents (encoded once, cached)."""
    codec = latent_codec(cfg)
    if codec is None:
        return x, info
    what = f"{cfg.data.dataset} {cfg.data.data_dir} {split} {info.image_size}px {info.channels}ch"
    return codec.encode_cached(x, what), model_info(cfg, info)


def dataset_info(cfg: Config) -> DataInfo:
    """Classes and channels of ``cfg.data`` (reads the smaller test split)."""
    d = cfg.data
    arrays = _load_arrays(cfg, "test")
    return DataInfo(arrays.num_classes, d.channels or arrays.images.shape[-1], d.image_size,
                    tuple(arrays.class_names))


def info_for_weights(cfg: Config, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> DataInfo:
    """Classes and channels of the network to load ``state_dict`` into: from the config when it
    says (``data.channels`` and ``model.num_classes``), else from the data set when it can be read
    (so that weights of another model are refused by the strict load), else from the weights
    themselves (a UNet's first convolution and label embedding). Sampling a released checkpoint
    thus needs its config, not its training data."""
    if cfg.data.channels and (cfg.model.num_classes or not cfg.model.class_cond):
        return DataInfo(cfg.model.num_classes if cfg.model.class_cond else 0, cfg.data.channels, cfg.data.image_size)
    try:
        return dataset_info(cfg)
    except (FileNotFoundError, ConfigError) as e:
        unreadable = e
    from .runtime.checkpoint import unet_shapes

    prefix = "net." if cfg.model.parameterization == "energy" else ""
    c_in, _, rows = unet_shapes(state_dict or {}, prefix)
    channels, classes = cfg.data.channels, cfg.model.num_classes if cfg.model.class_cond else 0
    if not channels and c_in:
        channels = c_in
    if not classes and rows and cfg.model.class_cond:
        classes = rows - (1 if cfg.train.uncond_p > 0 else 0)  # classifier-free guidance: the null label's row
    if channels and (classes or not cfg.model.class_cond):
        return DataInfo(classes, channels, cfg.data.image_size)
    raise ConfigError(f"the data set is not readable ({unreadable}) and the weights do not say the model's channels "
                      "and classes: set data.channels and model.num_classes")


def model_kwargs_from_config(cfg: Config, num_classes: int, in_channels: int, image_size: Optional[int] = None) -> dict:
    """ADM's ``create_model`` keyword arguments from a ``Config`` (model + diffusion.learn_sigma); what
    an export records to rebuild the network. Every key is the config's, so ``create_model``'s own
    defaults (ADM's) never apply. The ``arch`` and ``dit_*`` keys are included for a DiT only, and
    ``norm_groups`` when not ADM's 32, so a UNet's stay ADM's. ``image_size``: the network's input
    size when not ``data.image_size`` (latent diffusion: the latents')."""
    m = cfg.model

    def same(*names):  # keys that the config and ADM's create_model name alike
        return {k: getattr(m, k) for k in names}

    # In create_model's order (an export records them so).
    kwargs = {"image_size": image_size or cfg.data.image_size, **same("num_channels", "num_res_blocks", "channel_mult"),
              "learn_sigma": cfg.diffusion.learn_sigma,
              **same("class_cond", "use_checkpoint", "attention_resolutions", "num_heads", "num_head_channels",
                     "num_heads_upsample", "use_scale_shift_norm", "dropout", "resblock_updown", "use_fp16",
                     "use_new_attention_order"),
              # Classifier-free guidance training adds the null class, one more label row (none without: ADM's keys).
              "num_classes": (m.num_classes or num_classes) + (1 if m.class_cond and cfg.train.uncond_p > 0 else 0),
              "in_channels": in_channels, **same("embedding_kind", "attention_backend")}
    if m.norm_groups != 32:
        kwargs.update(norm_groups=m.norm_groups)
    if cfg.text.encoder:  # the class's prompt conditions the UNet (prompts.PromptConditioned), no label embedding
        kwargs.update(class_cond=False, text_dim=text_width(cfg.text.encoder))
    if m.arch == "diffusers":
        return {"arch": "diffusers", "diffusers_path": m.diffusers_path, "image_size": kwargs["image_size"],
                "in_channels": in_channels, "text_dim": kwargs.get("text_dim")}
    if m.arch != "unet":
        kwargs.update(arch=m.arch, dit_patch_size=m.dit_patch_size, dit_hidden_size=m.dit_hidden_size,
                      dit_depth=m.dit_depth, dit_num_heads=m.dit_num_heads, dit_mlp_ratio=m.dit_mlp_ratio)
    return kwargs


def vae_kwargs_from_config(cfg: Config, info: DataInfo) -> dict:
    """``MlpVAE`` keyword arguments (``generator: vae``, the ``vae`` section)."""
    v = cfg.vae
    return {"shape": list(info.shape), "encoder_dims": [int(d) for d in v.encoder_dims.split(",") if d.strip()],
            "decoder_dims": [int(d) for d in v.decoder_dims.split(",") if d.strip()], "latent_dim": v.latent_dim}


def prompts_of(cfg: Config, info: DataInfo) -> list:
    """The prompt of each class (``text``), and the empty prompt for the null class under CFG training."""
    try:
        return class_prompts(cfg.text.template, cfg.text.class_names, cfg.data.dataset, info.num_classes,
                             null_prompt=null_class_of(cfg, info.num_classes) is not None,
                             data_names=info.class_names)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_model(cfg: Config, info: DataInfo) -> torch.nn.Module:
    """The network of ``cfg`` (``model.arch``: UNet, DiT, or a pretrained diffusers UNet; ``generator: vae``:
    Masip's VAE), initialised from ``cfg.seed`` (same on every rank)."""
    torch.manual_seed(cfg.seed)
    if cfg.generator == "vae":
        try:
            return MlpVAE(**vae_kwargs_from_config(cfg, info))
        except ValueError as e:
            raise ConfigError(f"vae: {e}") from None
    try:
        if cfg.model.arch == "diffusers":  # a pretrained diffusers UNet, fine-tuned (its weights are the start)
            net = DiffusersUNet(load_diffusers_unet(cfg.model.diffusers_path))
            if net.in_channels != info.channels:
                raise ValueError(f"the diffusers UNet takes {net.in_channels} channels, the data (or latents) have "
                                 f"{info.channels}")
        else:
            net = create_model(**model_kwargs_from_config(cfg, info.num_classes, info.channels, info.image_size))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.text.encoder:  # each label's prompt, encoded once (state_dict keys gain the prefix "net.")
        width = getattr(net, "cross_attention_dim", None)
        if width is not None and width != text_width(cfg.text.encoder):
            raise ConfigError(f"model: the diffusers UNet's cross-attention takes {width}-wide tokens, the text "
                              f"encoder {cfg.text.encoder!r} gives {text_width(cfg.text.encoder)} (use the text "
                              f"encoder it was trained with, e.g. Stable Diffusion's text_encoder folder)")
        net = PromptConditioned(net, *encode_prompts(cfg.text.encoder, prompts_of(cfg, info),
                                                     cfg.text.max_length), center=cfg.text.center)
    if cfg.model.parameterization == "energy":  # eps = dE/dx; state_dict keys gain the prefix "net."
        net = EnergyModel(net, cfg.model.energy_form)
    return net


def init_weights(cfg: Config, model: torch.nn.Module, log=None) -> None:
    """``model.init_path``: strictly load those weights (ADM / DDPM-IP / GUIDE ``.pt``, or ours) into
    the freshly built network at the start of training (a continual run: before task 0). A resumed
    run's checkpoint replaces them afterwards, so rerunning the command still resumes."""
    from .runtime.checkpoint import load_weights

    path = cfg.model.init_path
    if not path:
        return
    if not bf.exists(path):
        raise ConfigError(f"model.init_path = {path!r}: no such file")
    load_weights(model, path, what="model (model.init_path)")
    if log is not None:
        log(f"initial weights from {path} (model.init_path)")


def build_objective(cfg: Config, diffusion, num_classes: int):
    """What a step of training minimises: the diffusion loss of ``cfg`` (``DiffusionObjective``), or the
    VAE's loss (``generator: vae``)."""
    if cfg.generator == "vae":
        return VAEObjective()
    return DiffusionObjective.from_config(cfg, diffusion, num_classes)


def build_diffusion(cfg: Config, spec: Optional[str] = None):
    """The diffusion of ``cfg`` over the timesteps of ``spec`` (a sampler value, ``respace``'s grammar: ``ddim50``
    keeps ADM's stride-20 steps); None: the training chain's, ``diffusion.timestep_respacing``."""
    d = cfg.diffusion
    try:
        return create_gaussian_diffusion(
            steps=d.diffusion_steps, learn_sigma=d.learn_sigma, sigma_small=d.sigma_small,
            noise_schedule=d.noise_schedule, use_kl=d.use_kl, predict_xstart=d.predict_xstart,
            rescale_timesteps=d.rescale_timesteps, rescale_learned_sigmas=d.rescale_learned_sigmas,
            timestep_respacing=d.timestep_respacing if spec is None else spec,
            rescale_zero_terminal_snr=d.rescale_zero_terminal_snr)
    except ValueError as e:
        raise ConfigError(f"diffusion: {e}") from None


def sampling_spec(cfg: Config, image_shape, num_classes: int, *, sampler: str, eta: float = 0.0,
                  guidance_scale: Optional[float] = None, clip_denoised: bool = True,
                  class_cond: Optional[bool] = None, mcmc=None, device=None) -> SamplingSpec:
    """A sampler of ``cfg``'s model: ``sampler`` (a sampler value: ``ddim50``, ``250``, ``unipc10``; its
    diffusion and whether it is DDIM) and the sampler's settings. The model's conditioning comes from
    the config (``model.class_cond``, the CFG null class); ``guidance_scale`` defaults to ``sample.guidance_scale``."""
    codec = latent_codec(cfg)
    return SamplingSpec(
        diffusion=build_diffusion(cfg, sampler), image_shape=tuple(image_shape),
        class_cond=cfg.model.class_cond if class_cond is None else bool(class_cond), ddim=is_ddim(sampler),
        eta=float(eta), clip_denoised=bool(clip_denoised) and codec is None,  # latents are not in [-1, 1]
        decode=codec.decode if codec is not None else None,
        guidance_scale=cfg.sample.guidance_scale if guidance_scale is None else float(guidance_scale),
        null_class=null_class_of(cfg, num_classes), mcmc=mcmc, device=device, precision=precision_of(cfg, device),
    )


def sample_spec(cfg: Config, info: DataInfo, device=None, **overrides) -> SamplingSpec:
    """The ``sample`` section's sampler (``image_sample.py``, samples at the end of training)."""
    s = cfg.sample
    kw = dict(sampler=s.sampler, eta=s.eta, clip_denoised=s.clip_denoised, device=device)
    return sampling_spec(cfg, info.shape, info.num_classes, **{**kw, **overrides})


def grid_spec(cfg: Config, info: DataInfo, device=None, **overrides) -> SamplingSpec:
    """The continual grids' sampler (``continual.eval_sampler``; eta 0)."""
    kw = dict(sampler=cfg.continual.eval_sampler, device=device)
    return sampling_spec(cfg, info.shape, info.num_classes, **{**kw, **overrides})


def build_classifier(cfg: Config, info: DataInfo) -> torch.nn.Module:
    """The noisy classifier of ``cfg.classifier`` (ADM's), initialised from ``cfg.seed + 1``."""
    torch.manual_seed(cfg.seed + 1)
    c = cfg.classifier
    try:
        return create_classifier(
            image_size=cfg.data.image_size, classifier_use_fp16=c.use_fp16, classifier_width=c.width,
            classifier_depth=c.depth, classifier_attention_resolutions=c.attention_resolutions,
            classifier_use_scale_shift_norm=c.use_scale_shift_norm, classifier_resblock_updown=c.resblock_updown,
            classifier_pool=c.pool, num_classes=info.num_classes, in_channels=info.channels,
            attention_backend=cfg.model.attention_backend)
    except ValueError as e:
        raise ConfigError(f"classifier: {e}") from None


def export_config(cfg: Config, info: DataInfo) -> dict:
    """What a reader of an exported model needs to rebuild it."""
    if cfg.generator == "vae":
        return {"generator": "vae", "vae": vae_kwargs_from_config(cfg, info),
                "data": {"dataset": cfg.data.dataset, "image_size": info.image_size, "channels": info.channels}}
    text = {"text": {"encoder": cfg.text.encoder, "max_length": cfg.text.max_length, "center": cfg.text.center,
                     "prompts": prompts_of(cfg, info)}} if cfg.text.encoder else {}
    return {
        **text,
        "model": model_kwargs_from_config(cfg, info.num_classes, info.channels, info.image_size),
        **({"latent": {"autoencoder": cfg.latent.autoencoder}} if cfg.latent.autoencoder else {}),
        "diffusion": to_dict(cfg.diffusion),
        "data": {"dataset": cfg.data.dataset, "image_size": info.image_size, "channels": info.channels},
        "parameterization": {"kind": cfg.model.parameterization, "energy_form": cfg.model.energy_form,
                             "null_class": null_class_of(cfg, info.num_classes)},
    }


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _network_name(cfg: Config) -> str:
    return "VAE" if cfg.generator == "vae" else "DiT" if cfg.model.arch == "dit" else "UNet"


def describe(cfg: Config, info: DataInfo, model: torch.nn.Module, n_train: int) -> str:
    return (
        f"run {cfg.name}: {cfg.data.dataset} ({n_train} train images, {info.num_classes} classes, "
        f"{info.channels}x{info.image_size}x{info.image_size}); {_network_name(cfg)} "
        f"{count_params(model) / 1e6:.2f}M params; "
        f"world size {dist_util.get_world_size()}, device {dist_util.dev()}; precision "
        f"{precision_of(cfg).describe()}" + (f"; CPU {describe_cpu()}" if dist_util.dev().type == "cpu" else "")
    )
