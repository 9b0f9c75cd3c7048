"""Few-step samplers as plain functions (k-diffusion style): DDIM, ancestral, DPM-Solver++(2M), UniPC.

Where they run: a sampler value that names a solver (``"dpmpp_2m10"``, ``"unipc10l"``; ``respace``)
makes ``sample_sets.sample_batch`` (every sample set: grids, evaluation, replay, ``image_sample.py``)
use it; DDIM and ancestral sampling there stay ADM's loops (``ddim_sample_loop`` / ``p_sample_loop``,
which also serve learned variances and GUIDE's x̂0 guidance). ``sample_ddim`` and ``sample_ancestral``
here are the same steps as plain functions (tested equal to those loops): the reference the solvers
are measured against (``scripts/sampler_steps.py``).

Every sampler has the same signature, so they are interchangeable::

    x0 = sample_<name>(eps_fn, x, timesteps, alphas_cumprod, generator=None, clip_denoised=False)
    x0 = sample(name, eps_fn, x, timesteps, alphas_cumprod, generator=None, clip_denoised=False)

- ``eps_fn(x, t) -> eps``: the noise prediction at x_t, with ``t`` a long tensor of shape [B] holding
  the ORIGINAL diffusion timestep (what ``SpacedDiffusion`` hands the network when
  ``rescale_timesteps`` is off; a model trained with it on wants ``t * 1000 / T``: wrap it).
  Classifier-free guidance is a matter of ``eps_fn``: return ``eps_u + w (eps_c - eps_u)``
  (as ``classifier_free.CFGModel`` does). Classifier guidance: ``guided_eps(eps_fn, cond_fn, alphas_cumprod)``.
  Class labels and other model kwargs are bound into ``eps_fn`` (closure or ``functools.partial``).
- ``x``: x_T at ``timesteps[0]``, usually N(0, I).
- ``timesteps``: strictly descending original timesteps in [0, T-1], one model evaluation each
  (N timesteps = N evaluations = N steps); the step after the last one goes to clean data
  (abar = 1) and returns x0. ``sampling_timesteps`` makes them ("trailing" or "logsnr" spacing).
- ``alphas_cumprod``: the ORIGINAL diffusion's abar_t, t = 0..T-1 (float64, length T; t = 0 is the
  first noising step, as ADM). For a ``SpacedDiffusion`` that is NOT ``diffusion.alphas_cumprod``
  (the spaced one) but ``diffusion_math.schedule_from_betas(diffusion.original_betas).alphas_cumprod``.
- ``generator``: a ``torch.Generator`` for the noise of ``sample_ancestral``; the deterministic
  samplers accept it and ignore it.
- ``clip_denoised``: clamp every x0 prediction to [-1, 1] (ADM's clip_denoised); every sampler uses
  the clamped x0 and re-derives eps from it, as ADM does. With ``guided_eps`` the guided x0 is
  clamped; ADM's ``condition_score`` instead guides the already clamped x0 and does not clamp again
  (the two agree with clipping off).

The samplers run under ``torch.no_grad`` (a cond_fn enables grad itself, as
``classifier_guidance.classifier_cond_fn`` does) and return a tensor of x's shape and dtype; the coefficients
are computed in float64 and applied in x's dtype.

Notation: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
(half the log-SNR), D = x0 prediction, h = lambda_next - lambda. The step into abar = 1 has
sigma = 0, lambda = +inf: every solver takes it first-order, x = D (k-diffusion's and diffusers'
"final sigma zero"; a second-order extrapolation in lambda diverges there).

Conditioning. ADM's cosine schedule clips its last beta to 0.999, so abar_{T-1} = 2.4e-9: the first step
from t = T-1 turns an eps perturbation (guidance, model error, float32 rounding) into x0 / alpha, 2e4
times it; with 10 trailing steps x_899 moves by alpha_899 / alpha_999 = 3e3 times it. Exact eps makes
it cancel, a guidance gradient that does not vanish at t = T-1 does not (clip_denoised tames it). The
same holds for ``GaussianDiffusion.ddim_sample_loop``. On that schedule "logsnr" spacing also spends
several of its first points on t >= 975 (lambda_999 = -9.9, lambda_998 = -6.5).

- ``sample_ddim``: DDIM, eta = 0 (Song et al. 2021, eq. 12) = DPM-Solver-1 = DPM-Solver++(1).
- ``sample_ancestral``: DDPM posterior sampling x_s ~ q(x_s | x_t, x0 = D) between consecutive
  timesteps (Ho et al. 2020, eq. 6-7, with the respaced beta'_t = 1 - abar_t / abar_s; variance
  beta~, i.e. ADM's FIXED_SMALL; = DDIM with eta = 1).
- ``sample_dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2):
  multistep, second order, data prediction; the first step is first order. Matches diffusers'
  ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", final_sigmas_type="zero")`` to 1e-12 in float64
  (with its float32 cast in ``step`` removed).
- ``sample_unipc``: UniPC-2 with B(h) = bh2 (Zhao et al. 2023, "UniPC", Algorithms 1-2 with
  B(h) = e^h - 1), data prediction: predictor UniP-2 (which for bh2 is exactly DPM-Solver++(2M)'s
  step); at every evaluated point but the first and the last, the corrector UniC corrects it with
  the model evaluation there, which the next predictor reuses (no extra evaluation); warm-up and
  final step first order (the official code's ``lower_order_final``). Matches diffusers'
  ``UniPCMultistepScheduler(solver_type="bh2", final_sigmas_type="zero")`` to 1e-12 in float64.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..diffusion.respace import (  # SOLVERS: the names the spec grammar knows
    SOLVERS,
    logsnr_timesteps,
    trailing_timesteps,
)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Timesteps


def sampling_timesteps(num_steps: int, alphas_cumprod: np.ndarray, spacing: str = "trailing") -> List[int]:
    """Descending original timesteps for ``num_steps`` evaluations: "trailing" (T-1, T-1-T/N, ...,
    ``respace.trailing_timesteps``) or "logsnr" (``logsnr_timesteps``)."""
    if spacing == "trailing":
        return trailing_timesteps(len(_check_alphas_cumprod(alphas_cumprod)), num_steps)
    if spacing == "logsnr":
        return logsnr_timesteps(num_steps, alphas_cumprod)
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected 'trailing' or 'logsnr'")


# ----------------------------------------------------------------------------------------------
# Guidance


def guided_eps(eps_fn: EpsFn, cond_fn: Callable, alphas_cumprod: np.ndarray) -> EpsFn:
    """eps' = eps - sqrt(1 - abar_t) cond_fn(x, t): classifier guidance on the score, as ADM's
    ``condition_score`` (Dhariwal & Nichol 2021, Algorithm 2), for any sampler here.

    ``cond_fn(x, t)`` returns (scale times) grad_x log p(y | x_t) at original timesteps ``t``; bind
    its labels beforehand (``functools.partial(cond_fn, y=y)``). GUIDE-style cond_fns that need x̂0
    (``needs_pred_xstart``) are not supported here.
    """
    if getattr(cond_fn, "needs_pred_xstart", False):
        raise ValueError("guided_eps: a cond_fn with needs_pred_xstart (guidance through x̂0) is not supported")
    sqrt_one_minus = torch.from_numpy(np.sqrt(1.0 - _check_alphas_cumprod(alphas_cumprod)))

    def eps_guided(x, t):
        eps = eps_fn(x, t)
        scale = sqrt_one_minus.to(x.device)[t].to(eps.dtype).view(-1, *([1] * (x.dim() - 1)))
        return eps - scale * cond_fn(x, t).to(eps.dtype)

    return eps_guided


# ----------------------------------------------------------------------------------------------
# Samplers


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: np.ndarray,
                generator: Optional[torch.Generator] = None, clip_denoised: bool = False) -> torch.Tensor:
    """DDIM, eta = 0: x_s = alpha_s D + sigma_s eps (Song et al. 2021, eq. 12)."""
    ts, abar = _grid(x, timesteps, alphas_cumprod)
    for i, t in enumerate(ts):
        eps, x0 = _predict(eps_fn, x, t, abar[i], clip_denoised)
        x = math.sqrt(abar[i + 1]) * x0 + math.sqrt(1.0 - abar[i + 1]) * eps  # math.sqrt: Python floats
    return x


@torch.no_grad()
def sample_ancestral(eps_fn: EpsFn, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: np.ndarray,
                     generator: Optional[torch.Generator] = None, clip_denoised: bool = False) -> torch.Tensor:
    """x_s ~ q(x_s | x_t, x0 = D) = N(c1 D + c2 x_t, beta~) with beta' = 1 - abar_t / abar_s
    (Ho et al. 2020, eq. 6-7 on the respaced chain); no noise on the last step (abar_s = 1)."""
    ts, abar = _grid(x, timesteps, alphas_cumprod)
    for i, t in enumerate(ts):
        _, x0 = _predict(eps_fn, x, t, abar[i], clip_denoised)
        a_t, a_s = float(abar[i]), float(abar[i + 1])
        beta = 1.0 - a_t / a_s
        c1 = math.sqrt(a_s) * beta / (1.0 - a_t)
        c2 = math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)
        var = beta * (1.0 - a_s) / (1.0 - a_t)
        x = c1 * x0 + c2 * x
        if var > 0:
            x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


@torch.no_grad()
def sample_dpmpp_2m(eps_fn: EpsFn, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: np.ndarray,
                    generator: Optional[torch.Generator] = None, clip_denoised: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): x_s = (sigma_s/sigma_t) x - alpha_s (e^-h - 1) D',
    D' = (1 + 1/2r) D_i - (1/2r) D_{i-1}, r = h_{i-1} / h_i; first and last (into abar = 1) steps first order."""
    ts, abar = _grid(x, timesteps, alphas_cumprod)
    alpha, sigma, lam = _alpha_sigma_lambda(abar)
    d_prev, h_prev = None, None
    for i, t in enumerate(ts):
        _, d = _predict(eps_fn, x, t, abar[i], clip_denoised)
        if sigma[i + 1] == 0.0:  # into clean data: lambda = inf, x = D
            x = d
            break
        h = lam[i + 1] - lam[i]
        d_eff = d if d_prev is None else d + (d - d_prev) * (h / (2.0 * h_prev))
        x = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * d_eff
        d_prev, h_prev = d, h
    return x


@torch.no_grad()
def sample_unipc(eps_fn: EpsFn, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: np.ndarray,
                 generator: Optional[torch.Generator] = None, clip_denoised: bool = False) -> torch.Tensor:
    """UniPC-2, bh2, data prediction (Zhao et al. 2023, Algorithms 1-2; the official ``multistep_uni_pc_bh_update``):
    predictor UniP-2, then at the next point UniC with the model output there, reused for the next predictor."""
    ts, abar = _grid(x, timesteps, alphas_cumprod)
    alpha, sigma, lam = _alpha_sigma_lambda(abar)
    ds: List[torch.Tensor] = []  # D at the evaluated points, last = current
    x_last, order_last = None, 0  # the point the last predictor step started from, and its order
    for i, t in enumerate(ts):
        _, d = _predict(eps_fn, x, t, abar[i], clip_denoised)
        last = sigma[i + 1] == 0.0
        # UniC: correct x_i with D(x_i), kept as D at the corrected point. Not at the last timestep:
        # the step into clean data, x = D, uses this same evaluation and would discard the correction.
        if x_last is not None and not last:
            x = _unipc_update(x_last, ds[-order_last:], lam[i - order_last:i], d, lam[i], alpha[i], sigma[i],
                              sigma[i - 1])
        ds = (ds + [d])[-2:]
        if last:  # into clean data: first order, x = D
            x = d
            break
        order = min(2, len(ds))  # warm-up: first step first order
        x_last, order_last = x, order
        x = _unipc_update(x, ds[-order:], lam[i + 1 - order:i + 1], None, lam[i + 1], alpha[i + 1], sigma[i + 1],
                          sigma[i])
    return x


SAMPLERS: Dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ancestral": sample_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "unipc": sample_unipc,
}


def sample(name: str, eps_fn: EpsFn, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: np.ndarray,
           generator: Optional[torch.Generator] = None, clip_denoised: bool = False) -> torch.Tensor:
    """The sampler ``SAMPLERS[name]`` (same arguments as every ``sample_<name>``)."""
    if name not in SAMPLERS:
        close = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown sampler {name!r}{hint} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[name](eps_fn, x, timesteps, alphas_cumprod, generator=generator, clip_denoised=clip_denoised)


# ----------------------------------------------------------------------------------------------
# Helpers


def _check_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size == 0:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D array, got shape {ac.shape}")
    if (ac == 0).any():
        raise ValueError("the DPM-Solver++ and UniPC steps need abar > 0 at every timestep (their log-SNR is "
                         "-inf at abar = 0): with diffusion.rescale_zero_terminal_snr sample with ddimN or an "
                         "ancestral spec")
    if not ((ac > 0).all() and (ac < 1).all()):
        raise ValueError("alphas_cumprod must lie in (0, 1)")
    return ac


def _grid(x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod) -> Tuple[List[int], np.ndarray]:
    """The validated timesteps and abar at each, with abar = 1 appended (the clean-data end)."""
    ac = _check_alphas_cumprod(alphas_cumprod)
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(not 0 <= t < len(ac) for t in ts):
        raise ValueError(f"timesteps must lie in [0, {len(ac) - 1}], got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return ts, np.append(ac[ts], 1.0)


def _alpha_sigma_lambda(abar: np.ndarray):
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at abar = 1
    return alpha.tolist(), sigma.tolist(), lam.tolist()  # Python floats: no numpy scalar meets a tensor


def _predict(eps_fn: EpsFn, x: torch.Tensor, t: int, abar_t: float, clip: bool):
    """eps and x0 at timestep t, in ADM's arithmetic (``predict_xstart_from_eps``, then eps re-derived
    from the possibly clamped x0 by ``predict_eps_from_xstart``), so that float32 runs agree with the
    project's loops: near abar = 0 (the cosine schedule's t = T-1: abar = 2.4e-9) x0 = (x - sigma eps) / alpha
    cancels catastrophically and the order of the float32 operations shows at 1e-4."""
    eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).to(x.dtype)
    recip, recipm1 = math.sqrt(1.0 / abar_t), math.sqrt(1.0 / abar_t - 1.0)
    x0 = recip * x - recipm1 * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = (recip * x - x0) / recipm1
    return eps, x0


def _unipc_update(x: torch.Tensor, ds: List[torch.Tensor], lams: Sequence[float], d_t: Optional[torch.Tensor],
                  lam_t: float, alpha_t: float, sigma_t: float, sigma_s: float) -> torch.Tensor:
    """One UniPC update (bh2, data prediction) from x at lams[-1] to lambda_t with the D's at ``lams``
    (oldest first, current last). ``d_t`` None: predictor UniP-p (p = len(ds)); else corrector UniC-p
    with ``d_t`` = D at lambda_t (Zhao et al. 2023, eq. 8 and Algorithm 2; the official code's
    ``multistep_uni_pc_bh_update``, ``variant='bh2'``)."""
    p = len(ds)
    m0, lam_s = ds[-1], lams[-1]
    h = lam_t - lam_s
    hh = -h  # data prediction integrates in -lambda
    # r_k = (lambda_{s_k} - lambda_s) / h for the older points, then 1 (the target point).
    rks = [(lams[-1 - k] - lam_s) / h for k in range(1, p)] + [1.0]
    d1s = [(ds[-1 - k] - m0) / rks[k - 1] for k in range(1, p)]
    h_phi_1 = math.expm1(hh)  # e^{-h} - 1
    b_h = math.expm1(hh)  # bh2: B(h) = e^h - 1 (in the data-prediction sign)
    h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1, []
    for k in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    x_t = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0
    if d_t is None:  # predictor: for p = 2 the official code fixes rho = 1/2 (then it is DPM-Solver++(2M))
        if p == 1:
            return x_t
        rhos = [0.5] if p == 2 else np.linalg.solve(np.vander(rks[:-1], p - 1, increasing=True).T, b[:-1]).tolist()
        res = sum(r * d1 for r, d1 in zip(rhos, d1s))
        return x_t - (alpha_t * b_h) * res
    if p == 1:
        rhos = [0.5]
    else:  # R[k][j] = r_j^k, k = 0..p-1
        rhos = np.linalg.solve(np.vander(rks, p, increasing=True).T, b).tolist()
    res = sum((r * d1 for r, d1 in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return x_t - (alpha_t * b_h) * (res + rhos[-1] * (d_t - m0))


__all__ = [
    "SAMPLERS", "SOLVERS", "guided_eps", "logsnr_timesteps", "sample", "sample_ancestral", "sample_ddim", "sample_dpmpp_2m",
    "sample_unipc", "sampling_timesteps",
]
