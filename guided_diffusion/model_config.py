"""The sections of the generator a config trains (registered on import): ``model`` (the network: ADM's
UNet, a DiT or a pretrained diffusers UNet, score or energy parameterised), ``diffusion`` (the Gaussian
diffusion) and ``vae`` (Masip's VAE baseline, ``generator: vae``), with their checks.
``experiment.build_model``, ``build_diffusion`` and ``build_objective`` read them."""

from __future__ import annotations

from dataclasses import dataclass

from .runtime.config import ConfigError, register_section_schema


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
    parameterization: str = "score"  # score (eps network) | energy (eps = dE/dx of a scalar energy, models/energy.py)
    energy_form: str = "dae"  # energy from the network output s: dae 0.5|x - s|^2 | l2 0.5|s|^2
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    norm_groups: int = 32  # GroupNorm groups (ADM: 32; at 32 channels that is an instance norm: see docs/recipe.md)
    resblock_updown: bool = False
    use_fp16: bool = False  # accepted for ADM compatibility; precision comes from train.precision
    use_new_attention_order: bool = False
    embedding_kind: str = "add_time_learned"  # add_time_learned | concat_time_1hot | none
    attention_backend: str = "sdpa"  # sdpa | einsum
    arch: str = "unet"  # unet | dit (a Diffusion Transformer, models/dit.py: the dit_* keys below) | diffusers
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
class VAEConfig:
    """The VAE generator (``generator: vae``): Masip et al.'s baseline, their configs/model/vae.json."""

    encoder_dims: str = "400,400"  # widths of the encoder's hidden layers
    decoder_dims: str = "400,400"  # widths of the decoder's hidden layers
    latent_dim: int = 100


def check_model(m: ModelConfig, cfg) -> None:
    """The network's checks across keys (its choices and sizes are the registered rules)."""

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    if not 0.0 <= m.dropout < 1.0:
        bad(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.norm_groups < 1:
        bad(f"model.norm_groups must be >= 1, got {m.norm_groups}")
    if m.arch == "unet" and m.norm_groups != 32:
        widths = {int(float(v) * m.num_channels) for v in (m.channel_mult or "1").split(",") if v.strip()}
        uneven = sorted(w for w in widths | {m.num_channels} if w % m.norm_groups)
        if uneven:
            bad(f"model.norm_groups = {m.norm_groups} does not divide the UNet's widths {uneven} "
                f"(model.num_channels x model.channel_mult)")
    if m.num_classes < 0:
        bad(f"model.num_classes must be >= 0, got {m.num_classes}")
    for key in ("attention_resolutions", "channel_mult"):
        text = getattr(m, key)
        try:
            [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            bad(f"model.{key} must be a comma-separated list of numbers, got {text!r}")
    if m.class_cond and m.embedding_kind == "none":
        bad("model.class_cond is true but model.embedding_kind is 'none': the model could not see the label")
    if m.parameterization == "energy" and cfg.diffusion.learn_sigma:
        bad("model.parameterization 'energy' predicts eps (or x0) as a gradient: set diffusion.learn_sigma false")
    if m.arch == "diffusers":
        if not m.diffusers_path:
            bad("model.arch diffusers fine-tunes a pretrained diffusers UNet: set model.diffusers_path to its folder")
        if cfg.diffusion.learn_sigma or m.parameterization != "score":
            bad("model.arch diffusers predicts eps: diffusion.learn_sigma false, model.parameterization score")
    if m.arch == "dit":
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


def check_vae(v: VAEConfig, cfg) -> None:
    """``generator: vae``: Masip's VAE is unconditional and trained by its own loss."""
    if cfg.generator != "vae":
        return
    for key in ("encoder_dims", "decoder_dims"):
        text = getattr(v, key)
        try:
            dims = [int(d) for d in str(text).split(",") if d.strip()]
        except ValueError:
            dims = []
        if not dims or min(dims) < 1:
            raise ConfigError(f"vae.{key} must be a comma-separated list of positive widths, got {text!r}")
    if v.latent_dim < 1:
        raise ConfigError(f"vae.latent_dim must be >= 1, got {v.latent_dim}")
    if cfg.model.class_cond:
        raise ConfigError("generator: vae is Masip's unconditional VAE: set model.class_cond false")
    if cfg.train.uncond_p > 0 or cfg.sample.guidance_scale != 1.0:
        raise ConfigError("generator: vae has no classifier-free guidance: leave train.uncond_p at 0 and "
                          "sample.guidance_scale at 1")
    if cfg.train.precision not in ("auto", "fp32") or cfg.model.use_fp16:
        raise ConfigError("generator: vae trains in fp32 (train.precision auto or fp32, model.use_fp16 false)")


register_section_schema("model", None, ModelConfig, check_model,
                        choices={"embedding_kind": ("add_time_learned", "concat_time_1hot", "none"),
                                 "attention_backend": ("sdpa", "einsum"), "arch": ("unet", "dit", "diffusers"),
                                 "parameterization": ("score", "energy"), "energy_form": ("dae", "l2")},
                        positive=("num_channels", "num_res_blocks"))
register_section_schema("diffusion", None, DiffusionConfig,
                        choices={"noise_schedule": ("linear", "cosine", "scaled_linear")},
                        positive=("diffusion_steps",))
register_section_schema("vae", None, VAEConfig, check_vae)
