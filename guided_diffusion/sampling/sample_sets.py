"""Sample sets from a diffusion model: batched, sharded over ranks, independent of the world size.

Batch ``b`` of a set covers sample indices ``[b*B, (b+1)*B)`` and is drawn by rank ``b % W``. Its
labels, its starting noise and every noise draw of the sampler come from generators seeded by
(seed, b) alone, so the set is the same for any number of ranks (for a given batch size).

How a set is drawn -- the (spaced) diffusion, the image shape and the sampler's settings -- is one
``SamplingSpec``, built once per sampler of a config by ``experiment.sampling_spec`` (``sample_spec``:
the ``sample`` section; ``grid_spec``: the continual grids' ``eval_sampler``). Classifier-free guidance
(``guidance_scale``), compositions of labels (``compose``) and MCMC corrections (``mcmc``) apply to
any model; see ``classifier_free`` and ``mcmc``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..image_util import to_uint8
from ..models.energy import is_energy_model
from ..runtime import dist_util
from ..runtime.precision import FP32, Precision
from ..runtime.seeding import step_seed
from .classifier_free import cfg_model, composed_model
from .mcmc import MCMCSettings, sample_loop


@dataclass(frozen=True)
class SamplingSpec:
    """How a sample set is drawn: ``diffusion`` (the respaced diffusion whose steps are taken: ADM's
    loops or the solver its spec names), the image shape (C, H, W), and the sampler's settings."""

    diffusion: Any
    image_shape: Tuple[int, int, int]
    class_cond: bool = False
    ddim: bool = True  # DDIM's steps (ADM's ddim_sample_loop, with eta), else ADM's ancestral ones (p_sample_loop)
    eta: float = 0.0
    clip_denoised: bool = True
    guidance_scale: float = 1.0  # != 1: classifier-free guidance with ``null_class``
    null_class: Optional[int] = None
    mcmc: Optional[MCMCSettings] = None
    device: Any = None
    decode: Optional[Callable] = None  # latent diffusion: latents -> images in [-1, 1] (latent.LatentCodec)
    precision: Precision = FP32  # the network's forward: autocast dtype and layout (runtime.precision)


def draw_labels(n: int, generator: torch.Generator, classes: Optional[Sequence[int]], class_label: int = -1):
    """Labels for ``n`` samples: a fixed class, or uniform over ``classes``."""
    if class_label >= 0:
        return torch.full((n,), class_label, dtype=torch.long)
    classes_t = torch.as_tensor(list(classes), dtype=torch.long)
    idx = torch.randint(0, len(classes_t), (n,), generator=generator)
    return classes_t[idx]


def sample_batch(
    model,
    diffusion,
    shape: Tuple[int, ...],
    *,
    y: Optional[torch.Tensor] = None,
    class_cond: bool = True,
    ddim: bool = True,
    eta: float = 0.0,
    clip_denoised: bool = True,
    cond_fn: Optional[Callable] = None,
    noise: Optional[torch.Tensor] = None,
    device=None,
    progress: bool = False,
    mcmc: Optional[MCMCSettings] = None,
    precision: Precision = FP32,
) -> torch.Tensor:
    """One batch of images in [-1, 1], (N,C,H,W).

    ``precision``: the network's forwards run under its autocast and layout and return float32; the
    sampler's own arithmetic, guidance and MCMC corrections stay float32.

    ``y`` goes into ``model_kwargs`` (so a ``cond_fn`` sees it); the model itself receives it only
    when ``class_cond`` (an unconditional model guided by a classifier toward ``y``, as ADM).
    ``mcmc``: MCMC corrections after each reverse step (``mcmc.sample_loop``).
    A diffusion built from a spec that names a solver (``diffusion.sampler``: ``"dpmpp_2m10"``) is
    sampled by that solver (``solver_loop``); ``ddim`` and ``eta`` then do not apply.
    """
    device = device or next(model.parameters()).device
    model_kwargs = {"y": y.to(device)} if y is not None else {}
    net = model

    def model_fn(x, t, y=None, **kw):
        with precision.autocast(device):
            x = precision.input(x)
            out = net(x, t, y=y, **kw) if class_cond else net(x, t, **kw)
        return precision.output(out)

    direct = getattr(net, "direct_sampler", False)  # a generator that decodes noise in one pass (the VAE)
    solver = "" if direct else getattr(diffusion, "sampler", "")
    use_mcmc = mcmc is not None and mcmc.sampler != "none"
    if direct and (cond_fn is not None or use_mcmc):
        raise ValueError("guidance and MCMC steps need a diffusion; this generator samples in one pass")
    if solver and use_mcmc:
        raise ValueError(f"MCMC corrections run on ADM's ancestral/DDIM steps, not on the {solver} solver")
    if solver and eta:
        raise ValueError(f"eta = {eta} is DDIM's; the {solver} solver is deterministic (use a 'ddimN' spec)")
    noise = noise.to(device) if noise is not None else None
    was_training = net.training
    net.eval()
    try:
        if direct:
            with torch.no_grad():
                return net.sample_from_noise(noise if noise is not None else torch.randn(shape).to(device))
        if solver:
            return solver_loop(diffusion, model_fn, shape, noise=noise, clip_denoised=clip_denoised,
                               model_kwargs=model_kwargs, cond_fn=cond_fn, device=device)
        if use_mcmc:
            kw = {"y": model_kwargs["y"]} if class_cond and "y" in model_kwargs else {}
            energy = (lambda x, t: net.energy_and_grad(x, t, **kw)) if is_energy_model(net) else None  # noqa: E731
            return sample_loop(
                diffusion, model_fn, shape, mcmc, predict=lambda x, t: net(x, t, **kw), energy_and_grad=energy,
                noise=noise, model_kwargs=model_kwargs, ddim=ddim, eta=eta, clip_denoised=clip_denoised,
                cond_fn=cond_fn, device=device,
            )
        loop = diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop
        kwargs = dict(eta=eta) if ddim else {}
        return loop(model_fn, shape, noise=noise, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                    cond_fn=cond_fn, device=device, progress=progress, **kwargs)
    finally:
        net.train(was_training)


def solver_loop(diffusion, model, shape, *, noise=None, clip_denoised: bool = True, model_kwargs=None,
                cond_fn: Optional[Callable] = None, device=None) -> torch.Tensor:
    """Sample ``diffusion`` (a ``SpacedDiffusion`` whose spec named a solver) with ``samplers.<sampler>``
    over its kept timesteps, with ADM's calling conventions: ``model(x, t, **model_kwargs)`` sees the
    timesteps ``p_mean_variance`` gives it (original, rescaled if ``rescale_timesteps``), eps comes from
    ``p_mean_variance`` (so learned variances, x0- and x_{t-1}-predicting models work), and
    ``cond_fn(x, t, **model_kwargs)`` guides the score (``samplers.guided_eps``; ADM's
    ``condition_score``). GUIDE's x̂0 guidance (``needs_pred_xstart``) needs ADM's loops: refused."""
    from ..diffusion import diffusion_math as dm
    from .samplers import guided_eps, sample

    model_kwargs = model_kwargs or {}
    device = device or torch.device("cpu")
    timestep_map = list(diffusion.timestep_map)
    index = torch.full((max(timestep_map) + 1,), -1, dtype=torch.long)
    index[torch.tensor(timestep_map)] = torch.arange(len(timestep_map))  # original timestep -> spaced index

    def eps_fn(x, t):
        k = index.to(t.device)[t]
        return diffusion.p_mean_variance(model, x, k, clip_denoised=False, model_kwargs=model_kwargs)["eps"]

    alphas_cumprod = dm.schedule_from_betas(diffusion.original_betas).alphas_cumprod
    if cond_fn is not None:
        if getattr(cond_fn, "needs_pred_xstart", False):
            raise ValueError(f"a cond_fn that guides through x̂0 (GUIDE's) runs on ADM's DDIM/ancestral loops, not on "
                             f"the {diffusion.sampler} solver: use a 'ddimN' sampler")

        def cond(x, t):
            k = index.to(t.device)[t]
            return cond_fn(x, diffusion.model_timesteps(k), **model_kwargs)

        eps_fn = guided_eps(eps_fn, cond, alphas_cumprod)
    x = noise if noise is not None else torch.randn(*shape, device=device)
    return sample(diffusion.sampler, eps_fn, x.to(device), sorted(timestep_map, reverse=True), alphas_cumprod,
                  clip_denoised=clip_denoised)


def sample_set(
    model,
    spec: SamplingSpec,
    *,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    classes: Optional[Sequence[int]] = None,
    class_label: int = -1,
    labels: Optional[Sequence[int]] = None,
    cond_fn_for: Optional[Callable] = None,
    progress=None,
    gather: bool = True,
    compose: Optional[Sequence[int]] = None,
    compose_weights: Optional[Sequence[float]] = None,
    log: Optional[Callable[[str], None]] = None,
    desc: str = "sampling",
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``num_samples`` images as ``spec`` says; returns (uint8 NHWC, int64 labels), complete on
    every rank.

    Labels: ``labels[i]`` for sample i when given, else ``class_label``, else uniform over ``classes``.
    ``cond_fn_for(y)`` may return a guidance function for a batch with labels ``y``.
    With ``gather=False`` each rank returns only the batches it drew.
    ``spec.guidance_scale`` != 1: classifier-free guidance (``classifier_free.cfg_model``).
    ``compose``: every sample from the product of the conditionals of these labels, weighted by
    ``compose_weights`` (``classifier_free.composed_model``); the returned labels are then ``compose[0]``.
    ``spec.mcmc``: MCMC corrections during sampling; its ``stats`` accumulate over the batches.
    ``log``: a stage of a run (a grid, an evaluation): a bar named ``desc`` (tqdm, on a terminal only,
    ``logger.progress_bar``) and, either way, one line at the end: ``desc: N images (sampler) in S s``.
    """
    class_cond, guidance_scale, null_class = spec.class_cond, spec.guidance_scale, spec.null_class
    image_shape = tuple(spec.image_shape)
    if (compose or guidance_scale != 1.0) and not class_cond:
        raise ValueError("classifier-free guidance and compositions need a class-conditional model")
    if compose:
        model = composed_model(model, compose, compose_weights, null_class)
        labels = [int(compose[0])] * num_samples
    else:
        model = cfg_model(model, guidance_scale, null_class)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    n_batches = (num_samples + batch_size - 1) // batch_size
    mine = list(range(rank, n_batches, world))
    out = {}
    if progress is None and log is not None:
        from ..runtime.logger import progress_bar as progress
    bar = progress(total=len(mine), desc=desc) if callable(progress) else None
    start = time.time()
    for b in mine:
        n = min(batch_size, num_samples - b * batch_size)
        gen = torch.Generator().manual_seed(step_seed(seed, b, 7))
        y = None
        if labels is not None:
            y = torch.as_tensor(list(labels[b * batch_size : b * batch_size + n]), dtype=torch.long)
        elif class_cond or class_label >= 0 or cond_fn_for is not None:
            y = draw_labels(n, gen, classes, class_label)
        noise = torch.randn((n, *image_shape), generator=gen)
        torch.manual_seed(step_seed(seed, b, 11))  # the sampler's own noise draws
        cond_fn = cond_fn_for(y) if cond_fn_for is not None else None
        x = sample_batch(
            model, spec.diffusion, (n, *image_shape), y=y, class_cond=class_cond, ddim=spec.ddim,
            eta=spec.eta, clip_denoised=spec.clip_denoised, cond_fn=cond_fn, noise=noise, device=spec.device,
            mcmc=spec.mcmc, precision=spec.precision,
        )
        if spec.decode is not None:
            x = spec.decode(x)
        batch_labels = y.numpy() if y is not None else np.zeros(n, dtype=np.int64)
        out[b] = (to_uint8(x), batch_labels.astype(np.int64))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if log is not None:
        steps = getattr(spec.diffusion, "num_timesteps", None)
        sampler = "decoder" if steps is None else f"{steps} {'DDIM' if spec.ddim else 'ancestral'} steps"
        log(f"{desc}: {num_samples} images ({sampler}) in {time.time() - start:.1f} s")
    if gather and world > 1:
        merged = {}
        for part in dist_util.all_gather_object(out):
            merged.update(part)
        out = merged
    order = sorted(out)
    if not order:
        c, h, w = image_shape
        return np.zeros((0, h, w, c), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate([out[b][0] for b in order]), np.concatenate([out[b][1] for b in order])
