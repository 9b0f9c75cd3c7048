"""The math of Gaussian diffusion as small pure functions: no model, no state.

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"): beta_t the noise schedule,
alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
Timesteps are 0-based as in ADM: t = 0 is the first noising step.

A ``Schedule`` holds the float64 numpy arrays derived from the betas (read-only). ``extract`` reads
one value per batch element at timesteps ``t`` and returns a float32 torch tensor broadcastable to
a shape; every function below that takes ``s`` and ``t`` does the reading itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Beta schedules


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The betas of a named schedule: "linear" (Ho et al. 2020), "cosine" (Nichol & Dhariwal 2021, eq. 17)
    or "scaled_linear" (Stable Diffusion's, diffusers' name: linear in sqrt(beta) from 0.00085 to 0.012)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        # Ho et al.'s 1e-4..0.02 over 1000 steps, rescaled so any T gives a similar process.
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_timesteps, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2)
    if name == "scaled_linear":
        # Rombach et al.'s latent diffusion (and Stable Diffusion): the pretrained UNets expect it.
        return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear', 'cosine' or 'scaled_linear'")


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta) for abar on [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def rescale_zero_terminal_snr(betas: Sequence[float]) -> np.ndarray:
    """The betas whose sqrt(abar) is shifted and scaled to end at 0 and keep its first value (Lin et al.
    2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1; diffusers'
    ``rescale_betas_zero_snr``, which Masip et al.'s scheduler uses): the last step is pure noise
    (abar_{T-1} = 0, beta_{T-1} = 1), as at sampling."""
    b = np.asarray(betas, dtype=np.float64)
    sqrt_ab = np.sqrt(np.cumprod(1.0 - b))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = np.append(ab[0], ab[1:] / ab[:-1])
    return 1.0 - alphas


# abar_t of a zero-terminal-SNR schedule's last step is 0: x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) is then
# taken with abar = ZERO_SNR_FLOOR (Masip et al.'s scheduler divides by sqrt(abar + 1e-8)); every other abar
# is used as it is.
ZERO_SNR_FLOOR = 1e-8


def spaced_betas(alphas_cumprod: np.ndarray, use_timesteps: Iterable[int]) -> Tuple[np.ndarray, List[int]]:
    """beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}} for the kept steps s_k (Nichol & Dhariwal 2021, sec. 4); also the s_k."""
    keep = sorted(set(int(i) for i in use_timesteps))
    betas, last = [], 1.0
    for i in keep:
        betas.append(1.0 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return np.array(betas, dtype=np.float64), keep


# ----------------------------------------------------------------------------------------------
# Quantities derived from the betas


@dataclass(frozen=True)
class Schedule:
    """Float64 arrays of length T derived from the betas (see ``schedule_from_betas``)."""

    betas: np.ndarray
    log_betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray  # abar_{t-1}, with abar_{-1} = 1
    alphas_cumprod_next: np.ndarray  # abar_{t+1}, with abar_T = 0
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray  # beta~_t, Ho et al. eq. 7 (0 at t = 0)
    posterior_log_variance_clipped: np.ndarray  # log beta~_t with t = 0 replaced by t = 1
    posterior_mean_coef1: np.ndarray  # multiplies x0 in mu~_t, Ho et al. eq. 7
    posterior_mean_coef2: np.ndarray  # multiplies x_t in mu~_t
    fixed_large_variance: np.ndarray  # beta_t, with t = 0 replaced by beta~_1 (ADM's FIXED_LARGE)
    fixed_large_log_variance: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def schedule_from_betas(betas: Sequence[float]) -> Schedule:
    """All derived arrays of a schedule (Ho et al. 2020, eq. 4 and 6-7), in float64."""
    b = np.array(betas, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    if not ((b > 0).all() and (b <= 1).all()):
        raise ValueError("betas must lie in (0, 1]")
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_div = np.where(ac > 0, ac, ZERO_SNR_FLOOR)  # the divisor of x0 from eps (zero terminal SNR: the last step)
    ac_prev = np.append(1.0, ac[:-1])
    ac_next = np.append(ac[1:], 0.0)
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    # beta~_0 = 0: use beta~_1 for its log so that log-variances stay finite (as ADM).
    first = post_var[1] if b.size > 1 else post_var[0]
    post_logvar = np.log(np.append(first, post_var[1:]))
    large = np.append(first, b[1:])
    with np.errstate(divide="ignore"):
        arrays = dict(
            betas=b,
            log_betas=np.log(b),
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            alphas_cumprod_next=ac_next,
            sqrt_alphas_cumprod=np.sqrt(ac),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
            log_one_minus_alphas_cumprod=np.log(1.0 - ac),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac_div),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac_div - 1.0),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_logvar,
            posterior_mean_coef1=b * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            fixed_large_variance=large,
            fixed_large_log_variance=np.log(large),
        )
    for a in arrays.values():
        a.setflags(write=False)
    return Schedule(**arrays)


SCHEDULE_FIELDS = tuple(f.name for f in fields(Schedule))


def extract(arr: np.ndarray, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """arr[t] as a float32 tensor on t's device, shaped [B, 1, ..., 1] and expanded to ``shape``."""
    res = torch.tensor(arr, dtype=torch.float64, device=t.device)[t].float()
    while res.dim() < len(shape):
        res = res[..., None]
    return res.expand(shape)


def nonzero_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """1 where t != 0, else 0, shaped [B, 1, ..., 1]: no noise is added on the last step."""
    return (t != 0).float().view(-1, *([1] * (ndim - 1)))


# ----------------------------------------------------------------------------------------------
# Forward process and posterior


def q_mean_variance(s: Schedule, x_start, t):
    """Mean, variance and log-variance of q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Ho et al. eq. 4)."""
    mean = extract(s.sqrt_alphas_cumprod, t, x_start.shape) * x_start
    var = extract(1.0 - s.alphas_cumprod, t, x_start.shape)
    log_var = extract(s.log_one_minus_alphas_cumprod, t, x_start.shape)
    return mean, var, log_var


def q_sample(s: Schedule, x_start, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4)."""
    return (
        extract(s.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        + extract(s.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
    )


def q_posterior_mean_variance(s: Schedule, x_start, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al. eq. 6-7)."""
    mean = (
        extract(s.posterior_mean_coef1, t, x_t.shape) * x_start
        + extract(s.posterior_mean_coef2, t, x_t.shape) * x_t
    )
    var = extract(s.posterior_variance, t, x_t.shape)
    log_var = extract(s.posterior_log_variance_clipped, t, x_t.shape)
    return mean, var, log_var


def predict_xstart_from_eps(s: Schedule, x_t, t, eps):
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): eq. 4 solved for x0 (Ho et al. eq. 15)."""
    return (
        extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
        - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
    )


def predict_eps_from_xstart(s: Schedule, x_t, t, x_start):
    """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1/abar_t - 1): eq. 4 solved for eps."""
    return (extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start) / extract(
        s.sqrt_recipm1_alphas_cumprod, t, x_t.shape
    )


def predict_xstart_from_xprev(s: Schedule, x_t, t, xprev):
    """x0 = (mu~ - coef2 x_t) / coef1: the posterior mean (Ho et al. eq. 7) solved for x0."""
    return (
        extract(1.0 / s.posterior_mean_coef1, t, x_t.shape) * xprev
        - extract(s.posterior_mean_coef2 / s.posterior_mean_coef1, t, x_t.shape) * x_t
    )


def learned_range_log_variance(s: Schedule, t, v, shape):
    """log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2 (Nichol & Dhariwal 2021, eq. 15)."""
    min_log = extract(s.posterior_log_variance_clipped, t, shape)
    max_log = extract(s.log_betas, t, shape)
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


# ----------------------------------------------------------------------------------------------
# Loss weighting


def snr(alpha_bar):
    """Signal-to-noise ratio of x_t: alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(alpha_bar, gamma: float, target: str = "eps"):
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 9-10): the weight that turns the plain MSE on
    ``target`` into min(SNR, gamma) times the MSE on x0 -- min(SNR, gamma) / SNR for an eps target,
    min(SNR, gamma) for an x0 target."""
    s = snr(alpha_bar)
    w = torch.clamp(s, max=gamma) if isinstance(s, torch.Tensor) else np.minimum(s, gamma)
    if target == "eps":  # SNR 0 (a zero-terminal-SNR schedule's last step): the limit, 1
        if isinstance(s, torch.Tensor):
            return torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), torch.ones_like(s))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0)
    if target == "x0":
        return w
    raise ValueError(f"min-SNR weighting is defined for eps or x0 targets, got {target!r}")


# ----------------------------------------------------------------------------------------------
# Reverse steps


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta: float):
    """sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (Song et al. eq. 16)."""
    return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * torch.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def ddim_step(
    x_t,
    eps,
    alpha_bar_t,
    alpha_bar_prev,
    eta: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    pred_xstart: Optional[torch.Tensor] = None,
):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (Song et al. eq. 12).

    ``pred_xstart`` defaults to x0 from (x_t, eps); pass it when it was clipped or guided.
    With ``alpha_bar_prev`` = abar_{t+1} and eta = 0 this is the reverse (encoding) ODE step.
    """
    if pred_xstart is None:
        pred_xstart = (x_t - torch.sqrt(1 - alpha_bar_t) * eps) / torch.sqrt(alpha_bar_t)
    if eta == 0.0:
        return pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev) * eps
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise")
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    mean = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    return mean + sigma * noise


def ancestral_step(mean, log_variance, noise, nonzero_mask):
    """x_{t-1} = mu + [t != 0] exp(log sigma^2 / 2) z (Ho et al. Algorithm 2, line 4)."""
    return mean + nonzero_mask * torch.exp(0.5 * log_variance) * noise
