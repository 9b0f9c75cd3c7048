"""Gaussian diffusion: training losses, ancestral and DDIM sampling, likelihood, guidance.

``GaussianDiffusion`` keeps guided-diffusion's (ADM's) public method names and keyword arguments,
so code written for guided-diffusion runs unchanged, and with the same seeds it draws the same
noise in the same order. The math lives in ``diffusion_math`` (pure functions); this class binds it
to a model ``model(x, t, **model_kwargs)``. It knows nothing of tasks, datasets or training loops.

Additions over ADM:
- ``p_mean_variance`` also returns ``eps`` (the model's epsilon-equivalent prediction) and
  ``model_output`` (the raw mean half of the output); ``p_mean_variance_from_output`` turns a given
  output into the step distribution (one code path for both, used by distillation).
- ``step_kl``: KL between two step distributions in bits per dimension (DKDM's student loss).
- guidance on x̂0 (GUIDE): a ``cond_fn`` with ``needs_pred_xstart = True`` (see ``p_sample``).
- sampling without a ``cond_fn`` runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import enum
import math
from typing import Dict

import numpy as np
import torch

from . import diffusion_math as dm
from .diffusion_math import betas_for_alpha_bar, get_named_beta_schedule  # noqa: F401  (ADM's names)
from .losses import discretized_gaussian_log_likelihood, normal_kl

_LN2 = math.log(2.0)

# ADM's private helper name, for code that imports it from here.
_extract_into_tensor = dm.extract


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the first (batch)."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def step_kl(mean_a, logvar_a, mean_b, logvar_b) -> torch.Tensor:
    """KL(N(mean_a, e^logvar_a) || N(mean_b, e^logvar_b)) averaged over non-batch dims, in bits.

    DKDM's student variance loss (Xiang et al. 2025, sec. 3.3): a = teacher step, b = student step.
    """
    return mean_flat(normal_kl(mean_a, logvar_a, mean_b, logvar_b)) / _LN2


class ModelMeanType(enum.Enum):
    """What the network's (first C channels of) output predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # epsilon


class ModelVarType(enum.Enum):
    """How the step variance is chosen; LEARNED* read it from the last C output channels."""

    LEARNED = enum.auto()  # the output is log sigma^2
    FIXED_SMALL = enum.auto()  # beta~_t
    FIXED_LARGE = enum.auto()  # beta_t (beta~_1 at t = 0)
    LEARNED_RANGE = enum.auto()  # v in [-1, 1] interpolates log beta~_t .. log beta_t


class LossType(enum.Enum):
    MSE = enum.auto()  # MSE on the mean output (+ vb when the variance is learned)
    RESCALED_MSE = enum.auto()  # as MSE, vb multiplied by T / 1000
    KL = enum.auto()  # the variational bound term
    RESCALED_KL = enum.auto()  # as KL, times T (estimates the whole bound)

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def needs_pred_xstart(cond_fn) -> bool:
    """True for a guidance function that wants the prediction x̂0(x_t) (GUIDE-style guidance)."""
    return cond_fn is not None and bool(getattr(cond_fn, "needs_pred_xstart", False))


def _infer_device(model, noise):
    if noise is not None:
        return noise.device
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class GaussianDiffusion:
    """Training and sampling utilities for a diffusion with the given betas (T = len(betas)).

    The schedule arrays (``betas``, ``alphas_cumprod``, ``posterior_variance`` ...) are float64
    numpy attributes, as in ADM; ``schedule`` holds them all.

    :param betas: 1-D betas in (0, 1], t = 0 first.
    :param model_mean_type: a ``ModelMeanType``.
    :param model_var_type: a ``ModelVarType``.
    :param loss_type: a ``LossType``.
    :param rescale_timesteps: feed the network t * 1000 / T (floats) instead of t.
    """

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self.schedule = dm.schedule_from_betas(betas)
        self.num_timesteps = self.schedule.num_timesteps
        # ADM exposes each array as an attribute; other code reads e.g. diffusion.alphas_cumprod.
        for name in dm.SCHEDULE_FIELDS:
            setattr(self, name, getattr(self.schedule, name))
        # abar_t for t = 0..T-1 and, at index -1 -> T, the clean end (abar = 1): ``alpha_bar``.
        self._alpha_bar_ends = torch.tensor(np.append(self.schedule.alphas_cumprod, 1.0), dtype=torch.float64)

    @property
    def learns_variance(self) -> bool:
        return self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)

    # ------------------------------------------------------------------------------------------
    # Forward process

    def q_mean_variance(self, x_start, t):
        """Mean, variance, log-variance of q(x_t | x_0)."""
        return dm.q_mean_variance(self.schedule, x_start, t)

    def q_sample(self, x_start, t, noise=None):
        """Sample x_t ~ q(x_t | x_0); ``noise`` defaults to ``torch.randn_like(x_start)``."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return dm.q_sample(self.schedule, x_start, t, noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} != x_t shape {tuple(x_t.shape)}")
        return dm.q_posterior_mean_variance(self.schedule, x_start, x_t, t)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return dm.predict_xstart_from_eps(self.schedule, x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return dm.predict_eps_from_xstart(self.schedule, x_t, t, pred_xstart)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return dm.predict_xstart_from_xprev(self.schedule, x_t, t, xprev)

    def _scale_timesteps(self, t):
        """The timesteps the network and any cond_fn receive for index t."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    def model_timesteps(self, t):
        """What the network and any cond_fn receive for this diffusion's step indices ``t`` (the public
        name of ADM's ``_scale_timesteps``: the original timesteps, rescaled to 0..1000 if asked)."""
        return self._scale_timesteps(t)

    @property
    def predicts_xstart(self) -> bool:
        """The network predicts x0 (``ModelMeanType.START_X``) rather than eps."""
        return self.model_mean_type == ModelMeanType.START_X

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """abar at step indices ``t`` as float32 on t's device; t = -1 is the clean end (abar = 1)."""
        idx = torch.where(t < 0, torch.full_like(t, self.num_timesteps), t)
        return self._alpha_bar_ends[idx.cpu()].to(torch.float32).to(t.device)

    def eps_from_output(self, model_output, x_t, t):
        """The eps a network output stands for: its first C channels, converted from x0 by eq. 4
        when the network predicts x0."""
        out = model_output[:, : x_t.shape[1]]
        return dm.predict_eps_from_xstart(self.schedule, x_t, t, out) if self.predicts_xstart else out

    # ------------------------------------------------------------------------------------------
    # The model's step distribution p(x_{t-1} | x_t)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Run the model once and return p(x_{t-1} | x_t) and x̂0.

        :param model: ``model(x, t, **model_kwargs)``; C or 2C output channels (learned variance).
        :param clip_denoised: clamp x̂0 to [-1, 1].
        :param denoised_fn: applied to x̂0 before clipping.
        :return: dict of ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` (as ADM), plus
            ``eps`` and ``model_output`` (see ``p_mean_variance_from_output``).
        """
        if model_kwargs is None:
            model_kwargs = {}
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)
        return self.p_mean_variance_from_output(
            model_output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )

    def p_mean_variance_from_output(self, model_output, x, t, clip_denoised=True, denoised_fn=None):
        """p(x_{t-1} | x_t) from a given network output (what ``p_mean_variance`` does after the forward).

        Use it to get a student's step distribution from its own (e.g. detached) eps and its variance
        channels: ``p_mean_variance_from_output(torch.cat([eps.detach(), v], 1), x_t, t, clip_denoised=False)``.

        :return: dict of ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` (processed x̂0),
            ``model_output`` (the first C channels, raw) and ``eps``: the raw output for EPSILON,
            else eps derived from the unprocessed x̂0.
        """
        B, C = x.shape[:2]
        if self.learns_variance:
            if model_output.shape != (B, 2 * C, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {(B, 2 * C, *x.shape[2:])}, got {tuple(model_output.shape)}"
                )
            model_output, var_values = torch.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                log_variance = var_values
            else:
                log_variance = dm.learned_range_log_variance(self.schedule, t, var_values, x.shape)
            variance = torch.exp(log_variance)
        else:
            if model_output.shape != x.shape:
                raise ValueError(f"model output shape {tuple(model_output.shape)} != x shape {tuple(x.shape)}")
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                var_arr, logvar_arr = self.schedule.fixed_large_variance, self.schedule.fixed_large_log_variance
            elif self.model_var_type == ModelVarType.FIXED_SMALL:
                var_arr, logvar_arr = self.schedule.posterior_variance, self.schedule.posterior_log_variance_clipped
            else:
                raise NotImplementedError(self.model_var_type)
            variance = dm.extract(var_arr, t, x.shape)
            log_variance = dm.extract(logvar_arr, t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.EPSILON:
            eps = model_output
            pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, eps))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        elif self.model_mean_type == ModelMeanType.START_X:
            eps = self._predict_eps_from_xstart(x, t, model_output)
            pred_xstart = process_xstart(model_output)
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        elif self.model_mean_type == ModelMeanType.PREVIOUS_X:
            raw_xstart = self._predict_xstart_from_xprev(x, t, model_output)
            eps = self._predict_eps_from_xstart(x, t, raw_xstart)
            pred_xstart = process_xstart(raw_xstart)
            mean = model_output
        else:
            raise NotImplementedError(self.model_mean_type)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
            "model_output": model_output,
        }

    # ------------------------------------------------------------------------------------------
    # Guidance

    def _cond_gradient(self, cond_fn, p_mean_var, x, t, model_kwargs):
        kwargs = model_kwargs or {}
        if needs_pred_xstart(cond_fn):
            return cond_fn(x, self._scale_timesteps(t), pred_xstart=p_mean_var["pred_xstart"], **kwargs)
        return cond_fn(x, self._scale_timesteps(t), **kwargs)

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """mu' = mu + Sigma * grad_x log p(y | x_t) (Sohl-Dickstein et al. 2015; Dhariwal & Nichol Alg. 1)."""
        gradient = self._cond_gradient(cond_fn, p_mean_var, x, t, model_kwargs)
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """eps' = eps - sqrt(1 - abar_t) grad, then x̂0 and the mean from eps' (Dhariwal & Nichol Alg. 2)."""
        alpha_bar = dm.extract(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * self._cond_gradient(cond_fn, p_mean_var, x, t, model_kwargs)
        out = dict(p_mean_var)
        out["eps"] = eps
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    def _guided_p_mean_variance(self, model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, condition,
                                noise_first):
        """p_mean_variance, the guidance and the step noise, drawn before (p_sample) or after (DDIM)
        the guidance as ADM does, so that seeded runs draw the same numbers.

        For a cond_fn with ``needs_pred_xstart`` the forward runs with grad on a leaf copy of x so
        that the cond_fn can differentiate through the network; the result is detached.
        """
        through_model = needs_pred_xstart(cond_fn)
        grad_ctx = torch.enable_grad() if through_model else contextlib.nullcontext()
        with grad_ctx:
            x_in = x.detach().requires_grad_(True) if through_model else x
            out = self.p_mean_variance(
                model, x_in, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
            )
            noise = torch.randn_like(x) if noise_first else None
            if cond_fn is not None:
                out = condition(cond_fn, out, x_in, t, model_kwargs)
        if through_model:
            out = {k: v.detach() for k, v in out.items()}
        if noise is None:
            noise = torch.randn_like(x)
        return out, noise

    # ------------------------------------------------------------------------------------------
    # Ancestral sampling

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """Sample x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. Algorithm 2), optionally guided.

        ``cond_fn(x, t, **model_kwargs)`` returns (scale times) grad_x log p(y | x_t), with t the
        timesteps the network sees; the mean becomes mu + Sigma * grad (``condition_mean``).

        GUIDE-style guidance through x̂0: if ``cond_fn.needs_pred_xstart`` is true, the network runs
        with grad enabled on ``x.detach().requires_grad_()`` and the call is
        ``cond_fn(x, t, pred_xstart=x̂0(x), **model_kwargs)``; x̂0 is differentiable w.r.t. that x,
        and cond_fn must return d/dx log p(y | x̂0(x)) itself, e.g. with
        ``torch.autograd.grad(log_p.sum(), x)[0]``.

        :return: dict of ``sample`` and ``pred_xstart``.
        """

        def condition(fn, out, x_in, t_, kw):
            out = dict(out)
            out["mean"] = self.condition_mean(fn, out, x_in, t_, model_kwargs=kw)
            return out

        out, noise = self._guided_p_mean_variance(
            model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, condition, noise_first=True
        )
        sample = dm.ancestral_step(out["mean"], out["log_variance"], noise, dm.nonzero_mask(t, x.dim()))
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False):
        """Ancestral sampling from x_T = ``noise`` (or N(0, I)) to x_0; returns x_0 (no grad).

        ``device`` defaults to the noise's, else the model's; ``progress`` shows a tqdm bar.
        """
        final = None
        for final in self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress,
        ):
            pass
        return _as_normal_tensor(final["sample"])

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                                  model_kwargs=None, device=None, progress=False):
        """Yield ``p_sample``'s dict at every step of ``p_sample_loop``.

        Without a cond_fn the steps run under ``torch.inference_mode``: clone a yielded tensor
        before using it in autograd.
        """
        yield from self._loop(self.p_sample, model, shape, noise, device, progress, cond_fn,
                              clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)

    def _loop(self, step, model, shape, noise, device, progress, cond_fn, **step_kwargs):
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if device is None:
            device = _infer_device(model, noise)
        img = noise if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm  # lazy: tqdm is needed only for a progress bar

            indices = tqdm(indices)
        # A cond_fn differentiates (through a classifier, maybe through the network): plain no_grad
        # lets it enable grad inside; otherwise nothing needs autograd at all.
        grad_mode = torch.no_grad if cond_fn is not None else torch.inference_mode
        for i in indices:
            t = torch.tensor([i] * shape[0], device=device)
            with grad_mode():
                out = step(model, img, t, cond_fn=cond_fn, **step_kwargs)
            yield out
            img = out["sample"]

    # ------------------------------------------------------------------------------------------
    # DDIM

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None, eta=0.0):
        """One DDIM step x_t -> x_{t-1} (Song et al. eq. 12); guidance via ``condition_score``.

        Same arguments and cond_fn contract as ``p_sample``.
        """

        def condition(fn, out, x_in, t_, kw):
            return self.condition_score(fn, out, x_in, t_, model_kwargs=kw)

        out, noise = self._guided_p_mean_variance(
            model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, condition, noise_first=False
        )
        # eps re-derived from the (clipped, guided) x̂0, whatever the network predicts.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = dm.extract(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = dm.extract(self.alphas_cumprod_prev, t, x.shape)
        # sigma is exactly 0 at t = 0 (abar_prev = 1), so no mask is needed.
        sample = dm.ddim_step(x, eps, alpha_bar, alpha_bar_prev, eta=eta, noise=noise, pred_xstart=out["pred_xstart"])
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """One deterministic DDIM encoding step x_t -> x_{t+1} (Song et al. eq. 12 run forward; eta must be 0)."""
        if eta != 0.0:
            raise ValueError("the reverse DDIM ODE is deterministic: eta must be 0")
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = dm.extract(self.alphas_cumprod_next, t, x.shape)
        alpha_bar = dm.extract(self.alphas_cumprod, t, x.shape)
        sample = dm.ddim_step(x, eps, alpha_bar, alpha_bar_next, eta=0.0, pred_xstart=out["pred_xstart"])
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0):
        """DDIM sampling over all (respaced) steps; same usage as ``p_sample_loop``."""
        final = None
        for final in self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
        ):
            pass
        return _as_normal_tensor(final["sample"])

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                                     model_kwargs=None, device=None, progress=False, eta=0.0):
        """Yield ``ddim_sample``'s dict at every step of ``ddim_sample_loop``."""
        yield from self._loop(self.ddim_sample, model, shape, noise, device, progress, cond_fn,
                              clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs, eta=eta)

    # ------------------------------------------------------------------------------------------
    # Losses and likelihood

    def _vb_terms_from_p(self, out, x_start, x_t, t):
        """Bits/dim of one bound term: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, decoder NLL at t = 0 (Ho et al. eq. 5)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / _LN2
        log_scales = 0.5 * out["log_variance"]
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=log_scales)
        decoder_nll = mean_flat(decoder_nll) / _LN2
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the variational bound in bits/dim: dict of ``output`` [N] and ``pred_xstart``."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        return self._vb_terms_from_p(out, x_start, x_t, t)

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> Dict[str, torch.Tensor]:
        """Per-sample losses at timesteps t, as ADM: dict with ``loss`` [N], and ``mse``/``vb`` when used.

        MSE/RESCALED_MSE: ``mse`` between the target (eps, x_0 or the posterior mean) and the
        output; with a learned variance, ``vb`` is the bound term computed with the mean detached
        (hybrid loss, Nichol & Dhariwal 2021 eq. 16), times T/1000 for RESCALED_MSE.
        KL/RESCALED_KL: ``loss`` is the bound term (times T for RESCALED_KL).
        """
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            vb = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)
            terms["loss"] = vb["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)
        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.learns_variance:
            C = x_t.shape[1]
            if model_output.shape != (x_t.shape[0], 2 * C, *x_t.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output 2C={2 * C} channels, got {tuple(model_output.shape)}"
                )
            model_output, var_values = torch.split(model_output, C, dim=1)
            # The bound trains only the variance: the mean half is detached.
            frozen = torch.cat([model_output.detach(), var_values], dim=1)
            out = self.p_mean_variance_from_output(frozen, x_t, t, clip_denoised=False)
            terms["vb"] = self._vb_terms_from_p(out, x_start, x_t, t)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # ADM: divide by 1000 so the bound, summed over T terms, does not swamp the MSE.
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.model_mean_type == ModelMeanType.EPSILON:
            target = noise
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        if model_output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(model_output.shape)} != target shape {tuple(target.shape)}")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    step_kl = staticmethod(step_kl)

    def _prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim, per sample (Ho et al. eq. 5, L_T)."""
        t = torch.tensor([self.num_timesteps - 1] * x_start.shape[0], device=x_start.device)
        mean, _, log_var = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / _LN2

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """The whole variational bound in bits/dim, one term per timestep (t = T-1 .. 0), as ADM.

        :return: dict of ``total_bpd`` [N], ``prior_bpd`` [N], and [N, T] tensors ``vb``,
            ``xstart_mse``, ``mse`` whose column j is timestep T-1-j (ADM's order).
        """
        vb, xstart_mse, mse = [], [], []
        for i in list(range(self.num_timesteps))[::-1]:
            t = torch.tensor([i] * x_start.shape[0], device=x_start.device)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb, xstart_mse, mse = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }


def _as_normal_tensor(x: torch.Tensor) -> torch.Tensor:
    """A tensor made under inference_mode cannot enter autograd; a clone made outside it can."""
    return x.clone() if x.is_inference() else x
