"""Teacher-made replay inputs for generative replay and generative distillation (Masip et al. 2023).

Every function here runs the frozen teacher under ``torch.inference_mode`` and works in the
*original* timesteps of the training diffusion (0..T-1).

- ``ddim_generate``: a DDIM trajectory of ``steps`` "trailing" steps (T-1, ..., T/steps - 1) from
  pure noise, to x0 -- or, with ``stop_t``, stopped at each sample's own timestep (the last step
  jumps exactly to it): partial generation.
- ``replay_inputs``: one replay batch (x_in, t, y, target) for a ``source``:
    full_generation     x_in = q_sample(ddim_generate(...), t, n)
    partial_generation  x_in = ddim_generate(..., stop_t=t)
    gaussian            x_in = n ~ N(0, I)
    gaussian_symmetry   as gaussian, mirrored: t in (T/3, 2T/3] half top-bottom, half left-right;
                        t <= T/3 both mirrors; t > 2T/3 untouched
  target: the teacher's prediction on (x_in, t) for distillation, or the noise n (x0 for an
  x0-predicting model) for plain generative replay.
With ``guidance_scale`` != 1 the teacher's *generation* is classifier-free guided (``classifier_free.cfg_model``,
the teacher's null class); distillation targets stay the teacher's raw prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..diffusion import diffusion_math as dm
from ..diffusion.diffusion_math import min_snr_weight
from ..diffusion.respace import trailing_timesteps
from ..sampling.classifier_free import cfg_model

SOURCES = ("full_generation", "partial_generation", "gaussian", "gaussian_symmetry")


def network_output(net, diffusion, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """The network's prediction at step indices ``t`` of ``diffusion``: its first C channels (eps, or
    x0 for an x0-predicting model), with the timesteps the network receives (``model_timesteps``)."""
    kwargs = {"y": y} if y is not None else {}
    return net(x, diffusion.model_timesteps(t), **kwargs)[:, : x.shape[1]]


def teacher_prediction(net, diffusion, x, t, y) -> torch.Tensor:
    """``network_output`` of a frozen teacher, made under inference mode and usable in autograd."""
    with torch.inference_mode():
        out = network_output(net, diffusion, x, t, y)
    return out.clone()


@torch.inference_mode()
def ddim_generate(
    net,
    diffusion,
    shape: Sequence[int],
    y: Optional[torch.Tensor],
    steps: int,
    eta: float = 0.0,
    stop_t: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    clip: bool = True,
    rederive_eps: bool = True,
    per_sample: bool = False,
) -> torch.Tensor:
    """DDIM from x_{T-1} ~ N(0, I) to x0, or to x_{stop_t[i]} per sample (partial generation).

    The steps are ``diffusion_math.ddim_step`` (Song et al. eq. 12/16) between per-sample abar values.
    The timesteps (``partial_timesteps``): ``steps`` trailing ones shared by every sample, where a sample
    whose ``stop_t`` lies before the next one jumps exactly to it; or, ``per_sample``, each sample's own
    ``steps`` steps evenly spaced from T-1 down to its ``stop_t`` (Masip et al.'s scheduler).
    ``clip``: x0 clipped to [-1, 1]; ``rederive_eps``: the step's eps re-derived from the clipped x0 (GLIDE's
    ``use_clipped_model_output``; Masip et al.'s pipeline keeps the network's eps: false)."""
    n = shape[0]
    x = torch.randn(tuple(shape), generator=generator).to(device)
    stop = torch.full((n,), -1, dtype=torch.long, device=device) if stop_t is None else stop_t.to(device)
    for tc, tn in partial_timesteps(diffusion.num_timesteps, steps, stop, per_sample):
        active = tn < tc
        if not bool(active.any()):
            continue
        eps = diffusion.eps_from_output(network_output(net, diffusion, x, tc, y), x, tc)
        x0 = dm.predict_xstart_from_eps(diffusion.schedule, x, tc, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            if rederive_eps:
                eps = dm.predict_eps_from_xstart(diffusion.schedule, x, tc, x0)
        z = torch.randn(x.shape, generator=generator).to(device) if eta > 0 else None
        ab_c = diffusion.alpha_bar(tc).view(-1, 1, 1, 1)
        ab_n = diffusion.alpha_bar(tn).view(-1, 1, 1, 1)  # 1 at the clean end: sigma = 0 there
        x_next = dm.ddim_step(x, eps, ab_c, ab_n, eta, noise=z, pred_xstart=x0)
        x = torch.where(active.view(-1, 1, 1, 1), x_next, x)
    return x


def partial_timesteps(T: int, steps: int, stop: torch.Tensor, per_sample: bool = False):
    """The (t_cur, t_next) per-sample timestep pairs of ``ddim_generate``, one pair of [N] tensors a step
    (t_next = -1: into clean data; a sample with t_next >= t_cur takes no step there).

    Shared grid: the trailing timesteps T-1, ..., T/steps - 1, each sample's next one raised to its own
    ``stop`` (where it jumps and then stays). ``per_sample``: sample i steps through
    s_k = stop_i + round(k (T - 1 - stop_i) / steps), k = steps, ..., 0: ``steps`` evenly spaced steps
    from T-1 to its own stop (Masip et al.'s ``set_timesteps(target_steps)``; theirs land one timestep
    below, at stop - 1, where the teacher is then asked at stop: here the state is at the timestep asked)."""
    if not per_sample:
        ts = trailing_timesteps(T, steps)
        for i, t_cur in enumerate(ts):
            t_next = ts[i + 1] if i + 1 < len(ts) else -1
            tc = torch.full_like(stop, t_cur)
            yield tc, torch.maximum(torch.full_like(stop, t_next), stop)
        return
    span = (T - 1 - stop).double()
    for k in range(steps, 0, -1):
        tc = stop + torch.round(k * span / steps).long()
        yield tc, stop + torch.round((k - 1) * span / steps).long()


def mirror_noise(noise: torch.Tensor, t: torch.Tensor, T: int, generator=None) -> torch.Tensor:
    """Masip's gaussian_symmetry input: mirrored noise by timestep band."""
    out = noise.clone()
    low, high = T // 3, 2 * T // 3
    mid = (t > low) & (t <= high)
    coin = torch.rand(len(t), generator=generator).to(t.device) < 0.5
    flip_h = (mid & coin) | (t <= low)  # rows flipped: top/bottom mirror
    flip_w = (mid & ~coin) | (t <= low)  # columns flipped: left/right mirror
    H, W = noise.shape[-2:]
    # Mirror: the bottom half is the flipped top half (and likewise for columns).
    top = noise[..., : (H + 1) // 2, :]
    sym_h = torch.cat([top, top.flip(-2)[..., : H // 2, :]], dim=-2)
    out = torch.where(flip_h.view(-1, 1, 1, 1), sym_h, out)
    left = out[..., :, : (W + 1) // 2]
    sym_w = torch.cat([left, left.flip(-1)[..., :, : W // 2]], dim=-1)
    return torch.where(flip_w.view(-1, 1, 1, 1), sym_w, out)


@dataclass
class ReplayBatch:
    x: torch.Tensor  # network input
    t: torch.Tensor  # original timesteps
    y: Optional[torch.Tensor]
    target: torch.Tensor  # what the student's prediction should match
    teacher_nfe: int  # teacher forward passes of one image each


def replay_inputs(*args, **kwargs) -> "ReplayBatch":
    """One replay batch of ``n`` samples from the frozen ``teacher`` (see the module docstring).

    Generated under ``torch.inference_mode``; the returned tensors are cloned outside it so that
    they can enter the student's autograd graph.
    """
    with torch.inference_mode():
        rb = _replay_inputs(*args, **kwargs)
    return ReplayBatch(rb.x.clone(), rb.t.clone(), None if rb.y is None else rb.y.clone(), rb.target.clone(),
                       rb.teacher_nfe)


def _replay_inputs(
    teacher,
    diffusion,
    *,
    source: str,
    n: int,
    shape: Sequence[int],
    old_classes: Optional[Sequence[int]],
    distill: bool,
    teacher_steps: int = 2,
    teacher_eta: float = 0.0,
    t_min: int = 0,
    generator: torch.Generator,
    device,
    guidance_scale: float = 1.0,
    null_class: Optional[int] = None,
    clip: bool = True,
    rederive_eps: bool = True,
    per_sample_partial: bool = False,
) -> ReplayBatch:
    """``clip``: the teacher's x0 clipped to [-1, 1] while it generates (images; not latents);
    ``rederive_eps``, ``per_sample_partial``: ``ddim_generate``'s ``rederive_eps`` and ``per_sample``."""
    if source not in SOURCES:
        raise ValueError(f"unknown replay source {source!r}; valid: {', '.join(SOURCES)}")
    T = diffusion.num_timesteps
    y = None
    if old_classes is not None:
        classes = torch.as_tensor(list(old_classes), dtype=torch.long)
        y = classes[torch.randint(0, len(classes), (n,), generator=generator)].to(device)
    t = torch.randint(t_min, T, (n,), generator=generator).to(device)
    full = (n, *shape)
    nfe = 0
    noise = torch.randn(full, generator=generator).to(device)
    gen_net = cfg_model(teacher, guidance_scale, null_class) if y is not None else teacher
    nfe_per_eval = 1 if gen_net is teacher else 2
    if source == "full_generation":
        x0 = ddim_generate(gen_net, diffusion, full, y, teacher_steps, teacher_eta, generator=generator, device=device,
                           clip=clip, rederive_eps=rederive_eps)
        nfe += n * teacher_steps * nfe_per_eval
        x_in = diffusion.q_sample(x0, t, noise)
    elif source == "partial_generation":
        x_in = ddim_generate(gen_net, diffusion, full, y, teacher_steps, teacher_eta, stop_t=t,
                             generator=generator, device=device, clip=clip, rederive_eps=rederive_eps,
                             per_sample=per_sample_partial)
        steps = partial_timesteps(T, teacher_steps, t, per_sample_partial)
        nfe += int(sum(int((tn < tc).sum()) for tc, tn in steps)) * nfe_per_eval
        x0 = None
    elif source == "gaussian":
        x_in = noise
        x0 = None
    else:
        x_in = mirror_noise(noise, t, T, generator)
        x0 = None
    if distill:
        target = network_output(teacher, diffusion, x_in, t, y)
        nfe += n
    else:
        if source != "full_generation":
            raise ValueError("plain generative replay (noise targets) needs source full_generation")
        target = x0 if diffusion.predicts_xstart else noise
    return ReplayBatch(x_in, t, y, target, nfe)


def replay_criterion(name: str, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, diffusion,
                     min_snr_gamma: float = 5.0, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample replay loss, averaged: mse, smooth_l1, or min_snr (per-sample min(SNR, g)/SNR).

    ``weights``: per-sample weights of the data term (``train.loss_weighting``), so that the replay
    term weights its timesteps as the data term does (Masip et al. use one criterion for both)."""
    dims = list(range(1, pred.ndim))
    if name == "mse":
        per = ((pred - target) ** 2).mean(dim=dims)
    elif name == "smooth_l1":
        per = F.smooth_l1_loss(pred, target, reduction="none").mean(dim=dims)
    elif name == "min_snr":
        w = min_snr_weight(diffusion.alpha_bar(t), min_snr_gamma, "x0" if diffusion.predicts_xstart else "eps")
        per = w * ((pred - target) ** 2).mean(dim=dims)
    else:
        raise ValueError(f"unknown criterion {name!r}; valid: mse, smooth_l1, min_snr")
    return (per * weights).mean() if weights is not None else per.mean()
