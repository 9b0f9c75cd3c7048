"""Factories with ADM's names and arguments (``create_model_and_diffusion`` etc.).

Code written against guided-diffusion's ``script_util`` runs unchanged; the additions are
``num_classes``, ``in_channels``, ``embedding_kind`` and ``attention_backend``, and image size 32
(channel_mult 1,2,2,2), 28 (1,2,2), 16 (1,2,2) and 8 (1,2) have default channel multipliers.
``create_model(..., arch="dit", dit_*=...)`` builds a Diffusion Transformer (``dit.DiTModel``) instead.
The objects of a typed config (``guided_diffusion.runtime.config``) are built by ``experiment``,
which calls these factories.
"""

from __future__ import annotations

from .diffusion import diffusion_math as dm
from .diffusion import gaussian_diffusion as gd
from .diffusion.respace import SpacedDiffusion, sampler_of, space_timesteps
from .models.dit import DiTModel
from .models.unet import EncoderUNetModel, UNetModel

NUM_CLASSES = 1000

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    28: (1, 2, 2),
    16: (1, 2, 2),
    8: (1, 2),
}


def diffusion_defaults():
    """ADM's defaults for the diffusion half."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def model_and_diffusion_defaults():
    """ADM's defaults for the UNet and diffusion, plus this project's additions."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        num_classes=NUM_CLASSES,
        in_channels=3,
        embedding_kind="add_time_learned",
        attention_backend="sdpa",
    )
    res.update(diffusion_defaults())
    return res


def classifier_defaults():
    """ADM's defaults for the noisy classifier."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
    )


def classifier_and_diffusion_defaults():
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def _channel_mult(channel_mult, image_size):
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            sizes = ", ".join(str(s) for s in sorted(DEFAULT_CHANNEL_MULT))
            raise ValueError(
                f"no default channel_mult for image size {image_size} (defaults exist for {sizes}); "
                "set channel_mult explicitly, e.g. '1,2,2'"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(c) if "." in c else int(c) for c in channel_mult.split(",") if c.strip())
    return tuple(channel_mult)


def _attention_ds(attention_resolutions, image_size, channel_mult):
    """ADM gives attention at *resolutions*; the UNet wants downsample factors. Check they exist."""
    if isinstance(attention_resolutions, str):
        res = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    else:
        res = [int(r) for r in attention_resolutions]
    available = [image_size // (2**level) for level in range(len(channel_mult))]
    for r in res:
        if r not in available:
            raise ValueError(
                f"attention resolution {r} does not occur in a UNet on {image_size}x{image_size} images "
                f"with {len(channel_mult)} levels; the feature maps are {', '.join(map(str, available))}"
            )
    return tuple(image_size // r for r in res)


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
    num_classes=NUM_CLASSES,
    in_channels=3,
    embedding_kind="add_time_learned",
    attention_backend="sdpa",
    arch="unet",
    dit_patch_size=2,
    dit_hidden_size=384,
    dit_depth=12,
    dit_num_heads=6,
    dit_mlp_ratio=4.0,
    norm_groups=32,
    text_dim=None,
):
    if arch == "dit":  # the UNet's own options do not apply
        return create_dit_model(image_size, in_channels=in_channels, learn_sigma=learn_sigma, class_cond=class_cond,
                                num_classes=num_classes, patch_size=dit_patch_size, hidden_size=dit_hidden_size,
                                depth=dit_depth, num_heads=dit_num_heads, mlp_ratio=dit_mlp_ratio)
    if arch != "unet":
        raise ValueError(f"arch must be one of unet, dit, got {arch!r}")
    channel_mult = _channel_mult(channel_mult, image_size)
    return UNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=(in_channels if not learn_sigma else 2 * in_channels),
        num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(attention_resolutions, image_size, channel_mult),
        dropout=dropout,
        channel_mult=channel_mult,
        num_classes=(num_classes if class_cond else None),
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
        embedding_kind=embedding_kind if class_cond else "none",
        attention_backend=attention_backend,
        norm_groups=norm_groups,
        text_dim=text_dim,
    )


def create_dit_model(image_size, in_channels=3, learn_sigma=False, class_cond=False, num_classes=NUM_CLASSES,
                     patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0):
    """A Diffusion Transformer with the UNet's interface (defaults: DiT-S/2's width, depth and heads)."""
    return DiTModel(image_size=image_size, in_channels=in_channels, patch_size=patch_size, hidden_size=hidden_size,
                    depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                    num_classes=(num_classes if class_cond else None), learn_sigma=learn_sigma)


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
    rescale_zero_terminal_snr=False,
):
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if rescale_zero_terminal_snr:  # not ADM's: Lin et al. 2024 (Masip et al.'s scheduler)
        betas = dm.rescale_zero_terminal_snr(betas)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if not timestep_respacing:
        timestep_respacing = [steps]
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing, dm.schedule_from_betas(betas).alphas_cumprod),
        sampler=sampler_of(timestep_respacing),
        betas=betas,
        model_mean_type=(gd.ModelMeanType.EPSILON if not predict_xstart else gd.ModelMeanType.START_X),
        model_var_type=(
            (gd.ModelVarType.FIXED_LARGE if not sigma_small else gd.ModelVarType.FIXED_SMALL)
            if not learn_sigma
            else gd.ModelVarType.LEARNED_RANGE
        ),
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def create_model_and_diffusion(
    image_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    channel_mult,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
    use_new_attention_order,
    num_classes=NUM_CLASSES,
    in_channels=3,
    embedding_kind="add_time_learned",
    attention_backend="sdpa",
):
    model = create_model(
        image_size,
        num_channels,
        num_res_blocks,
        channel_mult=channel_mult,
        learn_sigma=learn_sigma,
        class_cond=class_cond,
        use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        dropout=dropout,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
        use_new_attention_order=use_new_attention_order,
        num_classes=num_classes,
        in_channels=in_channels,
        embedding_kind=embedding_kind,
        attention_backend=attention_backend,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps,
        learn_sigma=learn_sigma,
        noise_schedule=noise_schedule,
        use_kl=use_kl,
        predict_xstart=predict_xstart,
        rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas,
        timestep_respacing=timestep_respacing,
    )
    return model, diffusion


def create_classifier(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
    num_classes=NUM_CLASSES,
    in_channels=3,
    attention_backend="sdpa",
):
    channel_mult = _channel_mult("", image_size)
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=classifier_width,
        out_channels=num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(classifier_attention_resolutions, image_size, channel_mult),
        channel_mult=channel_mult,
        use_fp16=classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
        attention_backend=attention_backend,
    )


def create_classifier_and_diffusion(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
    learn_sigma,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    num_classes=NUM_CLASSES,
    in_channels=3,
):
    classifier = create_classifier(
        image_size,
        classifier_use_fp16,
        classifier_width,
        classifier_depth,
        classifier_attention_resolutions,
        classifier_use_scale_shift_norm,
        classifier_resblock_updown,
        classifier_pool,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps,
        learn_sigma=learn_sigma,
        noise_schedule=noise_schedule,
        use_kl=use_kl,
        predict_xstart=predict_xstart,
        rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas,
        timestep_respacing=timestep_respacing,
    )
    return classifier, diffusion
