"""MCMC correction steps during ancestral sampling (Du et al. 2023, "Reduce, Reuse, Recycle", sec. 4).

After each reverse step x_t -> x_{t-1} the sample is refined by K MCMC steps that target the model's
own marginal at that noise level, p_{t-1}. Its score is ``-eps(x, t-1) / sigma_{t-1}`` with
``sigma = sqrt(1 - abar)``; an energy model (``energy.EnergyModel``) also gives the log-density up to
a constant, ``log p = -E / sigma`` (``log_density``), so its proposals can be Metropolis-corrected.

The samplers are plain functions on a *target* ``target(x) -> (log_p [N] or None, score like x)``:

    ula_step    unadjusted Langevin:  x + eps grad log p + sqrt(2 eps) z
    uha_step    unadjusted (underdamped) Hamiltonian: partial momentum refresh, L leapfrog steps
    mala_step   Langevin proposal + Metropolis-Hastings accept/reject, per sample
    cha_step    HMC with partial momentum refresh + Metropolis accept/reject, per sample
                (generalised HMC, Horowitz 1991: a rejected move flips the momentum)

Step sizes and the interval follow Continual-Diffusers (``eval_utils.py``, ``samplers/energy_pipeline.py``):
- ``eps_t = step_size * beta_t`` with beta_t of the *training* schedule at the level's original timestep
  (their ``step_sizes = betas * step_sizes_multiplier``), the same whatever the sampler's steps;
  ULA and MALA step with it.
- The Hamiltonian samplers (UHA, CHA) take leapfrog steps ``h_t = step_size * beta_t`` with the mass
  ``M_t = beta_t`` (their ``mass_diag_sqrt = betas``: momenta drawn as ``M z``, positions moved by
  ``h v / M^2``), so a position moves by about ``step_size`` per leapfrog step at every t
  (``mass: beta``, the default). ``mass: unit`` is this project's earlier choice: unit mass and
  ``h_t = sqrt(2 eps_t)``, where one leapfrog step with a fully refreshed momentum is exactly the
  Langevin proposal of the same eps_t.
- The interval: the reverse step from original timestep t is followed by corrections when
  ``t >= start_t`` (their ``if t >= mcmc_sampler_start_timestep``, default 50): from the start of
  sampling down to start_t, none below. The corrections target the level the sample is then at (the
  next kept timestep; Continual-Diffusers scores it at t itself), so the step to x_0 gets none.
- Acceptance (MALA, CHA) is per sample, and a rejected CHA move flips the momentum (Horowitz 1991);
  Continual-Diffusers accepts or rejects the whole batch on one draw and keeps the momentum.

Cost per corrected level, in model evaluations (each a forward, plus a backward for an energy
model): ULA K; UHA K L + 1; MALA K + 1; CHA K L + 1 (the last gradient is reused across steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from ..models.energy import at_least_float32, is_energy_model

SAMPLERS = ("none", "ula", "uha", "mala", "cha")
METROPOLIS = ("mala", "cha")
MASSES = ("beta", "unit")

Target = Callable[[torch.Tensor], Tuple[Optional[torch.Tensor], torch.Tensor]]


def _sum(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).sum(1)


def _rows(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    return mask.view(-1, *([1] * (ndim - 1)))


# ----------------------------------------------------------------------------------------------
# Samplers (pure functions; the noise comes from torch's global generator, as the ancestral steps)


class MCMCStep(NamedTuple):
    x: torch.Tensor  # the new state
    accept_prob: Optional[torch.Tensor]  # [N] min(1, exp(log alpha)) of the proposal (Metropolis samplers)
    accepted: Optional[torch.Tensor]  # [N] bool
    proposal: Optional[torch.Tensor]  # the proposed state
    state: Tuple  # (log_p, score) at x, to pass to the next step (saves one evaluation)
    v: Optional[torch.Tensor] = None  # the momentum after the step (Hamiltonian samplers)


def ula_step(x: torch.Tensor, target: Target, step_size: float) -> MCMCStep:
    """Unadjusted Langevin: ``x + eps * grad log p(x) + sqrt(2 eps) z``."""
    _, score = target(x)
    x = x + step_size * score + math.sqrt(2.0 * step_size) * torch.randn_like(x)
    return MCMCStep(x, None, None, None, ())


def _mala_log_q(x_to: torch.Tensor, x_from: torch.Tensor, score_from: torch.Tensor, step_size: float) -> torch.Tensor:
    """log N(x_to; x_from + eps * score_from, 2 eps I), without the constant."""
    return -_sum((x_to - x_from - step_size * score_from) ** 2) / (4.0 * step_size)


def mala_step(x: torch.Tensor, target: Target, step_size: float, state: Tuple = ()) -> MCMCStep:
    """Metropolis-adjusted Langevin: a Langevin proposal, accepted per sample with probability
    ``min(1, p(x') q(x | x') / (p(x) q(x' | x)))``."""
    log_p, score = state if state else target(x)
    if log_p is None:
        raise ValueError("MALA needs log-densities: use an energy model (model.parameterization: energy)")
    prop = x + step_size * score + math.sqrt(2.0 * step_size) * torch.randn_like(x)
    log_p_prop, score_prop = target(prop)
    log_alpha = (log_p_prop - log_p + _mala_log_q(x, prop, score_prop, step_size)
                 - _mala_log_q(prop, x, score, step_size))
    accept_prob = torch.exp(torch.clamp(log_alpha, max=0.0))
    accepted = torch.rand(x.shape[0]).to(x.device) < accept_prob
    m = _rows(accepted, x.dim())
    new = (torch.where(accepted, log_p_prop, log_p), torch.where(m, score_prop, score))
    return MCMCStep(torch.where(m, prop, x), accept_prob, accepted, prop, new)


def leapfrog(x: torch.Tensor, v: torch.Tensor, target: Target, h: float, n: int, score: torch.Tensor,
             mass: float = 1.0):
    """``n`` leapfrog steps of size ``h`` from (x, v) with the score at x given, for the kinetic energy
    ``|v|^2 / (2 M^2)`` (``mass`` M: Continual-Diffusers' ``mass_diag_sqrt``, the same for every
    coordinate). Returns x, v, and (log_p, score) at the end."""
    log_p = None
    for _ in range(n):
        v = v + 0.5 * h * score
        x = x + h * v / mass**2
        log_p, score = target(x)
        v = v + 0.5 * h * score
    return x, v, (log_p, score)


def _refresh(v: Optional[torch.Tensor], x: torch.Tensor, damping: float, mass: float = 1.0) -> torch.Tensor:
    """Partial momentum refreshment ``damping * v + sqrt(1 - damping^2) M z`` (a fresh N(0, M^2 I) if v is None)."""
    z = torch.randn_like(x) * mass
    if v is None:
        return z
    return damping * v + math.sqrt(max(0.0, 1.0 - damping**2)) * z


def uha_step(x: torch.Tensor, target: Target, h: float, v: Optional[torch.Tensor] = None,
             damping: float = 0.9, leapfrog_steps: int = 3, state: Tuple = (), mass: float = 1.0) -> MCMCStep:
    """Unadjusted Hamiltonian: partial momentum refresh, then ``leapfrog_steps`` leapfrog steps of
    size ``h`` with mass ``mass``; no accept/reject."""
    score = state[1] if state else target(x)[1]
    v = _refresh(v, x, damping, mass)
    x, v, new = leapfrog(x, v, target, h, leapfrog_steps, score, mass)
    return MCMCStep(x, None, None, None, new, v)


def cha_step(x: torch.Tensor, target: Target, h: float, v: Optional[torch.Tensor] = None,
             damping: float = 0.9, leapfrog_steps: int = 3, state: Tuple = (), mass: float = 1.0) -> MCMCStep:
    """HMC with Metropolis correction (Du et al.'s "CHA"): partial momentum refresh, leapfrog (step ``h``,
    mass M), then accept per sample with probability ``min(1, exp(H(x, v) - H(x', v')))``,
    ``H = -log p + |v|^2 / (2 M^2)``. A rejected sample keeps x and flips its (refreshed) momentum,
    which keeps detailed balance."""
    log_p, score = state if state else target(x)
    if log_p is None:
        raise ValueError("CHA needs log-densities: use an energy model (model.parameterization: energy)")
    v = _refresh(v, x, damping, mass)
    prop, v_prop, (log_p_prop, score_prop) = leapfrog(x, v, target, h, leapfrog_steps, score, mass)
    kinetic = lambda u: 0.5 * _sum(u**2) / mass**2  # noqa: E731
    log_alpha = (log_p_prop - kinetic(v_prop)) - (log_p - kinetic(v))
    accept_prob = torch.exp(torch.clamp(log_alpha, max=0.0))
    accepted = torch.rand(x.shape[0]).to(x.device) < accept_prob
    m = _rows(accepted, x.dim())
    new = (torch.where(accepted, log_p_prop, log_p), torch.where(m, score_prop, score))
    return MCMCStep(torch.where(m, prop, x), accept_prob, accepted, prop, new, torch.where(m, v_prop, -v))


# ----------------------------------------------------------------------------------------------
# The diffusion model's target at one noise level


def log_density(energy: torch.Tensor, x: torch.Tensor, alpha_bar: float, predicts_xstart: bool) -> torch.Tensor:
    """log p_t(x) + const of an energy model at a level with ``alpha_bar``.

    eps prediction (eps = dE/dx):  log p = -E / sigma.
    x0 prediction (x0 = dE/dx):    eps = (x - sqrt(abar) x0) / sigma = d/dx [(|x|^2/2 - sqrt(abar) E) / sigma],
                                   so log p = -(|x|^2/2 - sqrt(abar) E) / sigma^2.
    """
    sigma = math.sqrt(1.0 - alpha_bar)
    if predicts_xstart:
        return -(0.5 * _sum(at_least_float32(x) ** 2) - math.sqrt(alpha_bar) * energy) / sigma**2
    return -energy / sigma


def level_target(diffusion, index: int, predict: Callable, energy_and_grad: Optional[Callable],
                 counter: Optional[Dict[str, int]] = None) -> Target:
    """``target(x) -> (log_p or None, score)`` for the marginal at step ``index`` of ``diffusion``.

    ``predict(x, t)`` is the network's raw output; ``energy_and_grad(x, t)`` (energy models) gives
    (E, dE/dx); ``t`` is what the network receives for that step (original, maybe rescaled).
    """
    mean_type = getattr(getattr(diffusion, "model_mean_type", None), "name", "EPSILON")
    if mean_type not in ("EPSILON", "START_X"):
        raise ValueError(f"MCMC needs an eps or x0 prediction, not {mean_type}")
    x0_pred = mean_type == "START_X"
    ab = float(diffusion.alphas_cumprod[index])
    sigma = math.sqrt(1.0 - ab)

    def target(x):
        t = diffusion.model_timesteps(torch.full((x.shape[0],), index, dtype=torch.long, device=x.device))
        if counter is not None:
            counter["mcmc_evals"] = counter.get("mcmc_evals", 0) + 1
        log_p = None
        if energy_and_grad is not None:
            e, out = energy_and_grad(x, t)
            log_p = log_density(e, x, ab, x0_pred)
        else:
            out = predict(x, t)
        out = at_least_float32(out[:, : x.shape[1]])
        eps = (x - math.sqrt(ab) * out) / sigma if x0_pred else out
        return log_p, -eps / sigma

    return target


# ----------------------------------------------------------------------------------------------
# The driver


@dataclass
class MCMCSettings:
    """The ``sample.mcmc*`` keys."""

    sampler: str = "none"  # none | ula | uha | mala | cha
    steps: int = 1  # K corrections after each reverse step
    step_size: float = 0.1  # eps_t = step_size * beta_t (training schedule); Hamiltonian: h_t = step_size * beta_t
    start_t: int = 50  # correct after the reverse steps from original timesteps >= start_t (0: every step)
    damping: float = 0.9  # Hamiltonian samplers: momentum kept per refresh
    leapfrog_steps: int = 3
    mass: str = "beta"  # Hamiltonian samplers: beta (M_t = beta_t, Continual-Diffusers) | unit (h_t = sqrt(2 eps_t))
    stats: Dict[str, float] = field(default_factory=dict)  # filled by sample_loop: evaluations, acceptance

    @classmethod
    def from_config(cls, s) -> Optional["MCMCSettings"]:
        """From a ``SampleConfig``; None when ``sample.mcmc`` is none."""
        if s.mcmc == "none":
            return None
        return cls(s.mcmc, s.mcmc_steps, s.mcmc_step_size, s.mcmc_start_t, s.mcmc_damping, s.mcmc_leapfrog_steps,
                   s.mcmc_mass)

    def hamiltonian(self, beta: float) -> Tuple[float, float]:
        """(leapfrog step h, mass M) at a level whose training-schedule beta is ``beta``."""
        if self.mass == "beta":
            return self.step_size * beta, beta
        if self.mass == "unit":
            return math.sqrt(2.0 * self.step_size * beta), 1.0
        raise ValueError(f"unknown MCMC mass {self.mass!r}; valid: {', '.join(MASSES)}")


def _original_timesteps(diffusion) -> np.ndarray:
    return np.asarray(getattr(diffusion, "timestep_map", range(diffusion.num_timesteps)), dtype=np.int64)


def _training_betas(diffusion) -> np.ndarray:
    betas = getattr(diffusion, "original_betas", None)
    return np.asarray(diffusion.betas if betas is None else betas, dtype=np.float64)


def correct(x: torch.Tensor, target: Target, settings: MCMCSettings, beta: float) -> torch.Tensor:
    """``settings.steps`` steps of ``settings.sampler`` on ``target`` from x at a level whose training
    beta is ``beta`` (Langevin step ``settings.step_size * beta``; Hamiltonian: ``settings.hamiltonian``);
    updates settings.stats."""
    state, v = (), None
    st = settings.stats
    eps = settings.step_size * beta
    for _ in range(settings.steps):
        if settings.sampler == "ula":
            r = ula_step(x, target, eps)
        elif settings.sampler == "mala":
            r = mala_step(x, target, eps, state)
        elif settings.sampler in ("uha", "cha"):
            h, mass = settings.hamiltonian(beta)
            step = uha_step if settings.sampler == "uha" else cha_step
            r = step(x, target, h, v, settings.damping, settings.leapfrog_steps, state, mass)
        else:
            raise ValueError(f"unknown MCMC sampler {settings.sampler!r}; valid: {', '.join(SAMPLERS[1:])}")
        x, state, v = r.x, r.state, r.v
        if r.accept_prob is not None:
            st["proposals"] = st.get("proposals", 0) + int(r.accepted.numel())
            st["accepted"] = st.get("accepted", 0) + int(r.accepted.sum())
    return x


def sample_loop(diffusion, model, shape, settings: MCMCSettings, *, predict: Callable,
                energy_and_grad: Optional[Callable] = None, noise=None, model_kwargs=None, ddim=False,
                eta=0.0, clip_denoised=True, cond_fn=None, device=None) -> torch.Tensor:
    """Ancestral (or DDIM) sampling with MCMC corrections; returns x_0.

    ``model``/``model_kwargs``/``cond_fn`` are as for ``diffusion.p_sample``; ``predict(x, t)`` and
    ``energy_and_grad(x, t)`` evaluate the (guided, composed) network for the MCMC targets.
    After the reverse step at index i (i > 0) from original timestep t the sample is at level i - 1; it
    is corrected there when t >= ``settings.start_t`` (Continual-Diffusers' interval).
    """
    if settings.sampler in METROPOLIS and energy_and_grad is None:
        raise ValueError(f"MCMC sampler {settings.sampler!r} needs an energy model (model.parameterization: energy)")
    if device is None:  # ``model`` may be a plain function (no parameters to ask)
        params = getattr(model, "parameters", None)
        device = noise.device if noise is not None else (next(params()).device if params else torch.device("cpu"))
    img = noise if noise is not None else torch.randn(*shape, device=device)
    orig_t = _original_timesteps(diffusion)
    betas = _training_betas(diffusion)
    step = diffusion.ddim_sample if ddim else diffusion.p_sample
    kwargs = dict(eta=eta) if ddim else {}
    st = settings.stats
    with torch.no_grad():
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            img = step(model, img, t, clip_denoised=clip_denoised, cond_fn=cond_fn, model_kwargs=model_kwargs,
                       **kwargs)["sample"]
            st["reverse_steps"] = st.get("reverse_steps", 0) + 1
            j = i - 1
            if j < 0 or orig_t[i] < settings.start_t:
                continue
            target = level_target(diffusion, j, predict, energy_and_grad, st)
            img = correct(img, target, settings, float(betas[orig_t[j]]))
            st["corrected_levels"] = st.get("corrected_levels", 0) + 1
    return img


__all__ = ["SAMPLERS", "METROPOLIS", "MASSES", "MCMCSettings", "MCMCStep", "ula_step", "uha_step", "mala_step", "cha_step",
           "leapfrog", "log_density", "level_target", "correct", "sample_loop", "is_energy_model"]
