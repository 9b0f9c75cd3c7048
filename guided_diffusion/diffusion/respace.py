"""Timestep respacing: sample or train on a subset of a diffusion's timesteps (Nichol & Dhariwal 2021, sec. 4).

``space_timesteps(T, spec)`` picks the subset; ``SpacedDiffusion`` is the diffusion over it. The
spec grammar is ADM's, and a config's sampler value is such a spec (``sampling.config``: one that
starts with ``ddim`` samples with DDIM, a count with ADM's ancestral steps, a solver's name with it):

- ``"ddimN"``: the DDIM striding {0, i, 2i, ...} with the integer stride i that gives exactly N
  steps (``"ddim50"`` on 1000 steps: stride 20); ValueError when no such stride exists. This
  "leading" spacing starts sampling at t = T - i (``ddim10``: 900 of 1000).
- ``"ddimNt"`` or ``"Nt"`` (not ADM's): N "trailing" steps, T-1, T-1-T/N, ... (``ddim10t``: 999,
  899, ..., 99), the spacing of diffusers' ``timestep_spacing="trailing"`` that Masip et al. sample
  with: the first step starts from pure noise at the last timestep. As a sampler value, ``ddim``
  is DDIM, as for ``ddimN`` (``Nt``: ancestral).
- ``"ddimNl"`` or ``"Nl"`` (not ADM's): N steps uniform in log-SNR (``logsnr_timesteps``; Lu et al.
  2022, sec. 3.3), the few-step solvers' spacing.
- ``"dpmpp_2mN"``, ``"unipcN"`` (not ADM's): N steps of that solver (``SOLVERS``: samplers
  ADM's loops do not have), trailing spacing; ``"dpmpp_2mNl"``: log-SNR spacing (``"dpmpp_2mNt"``:
  trailing, said explicitly). ``sampler_of`` reads the name, a ``SpacedDiffusion`` built from the
  spec carries it (``sampler``) and ``sample_sets.sample_batch`` runs it. DDIM's eta does not apply.
- ``"N"`` or ``"a,b,c"``: split the T steps into len(counts) nearly equal sections (the first
  T mod len sections one step longer) and take ``count`` evenly spaced (rounded) steps in each.
- a list or tuple of ints: the section counts of the previous form.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from . import diffusion_math as dm
from .gaussian_diffusion import GaussianDiffusion


def trailing_timesteps(num_timesteps: int, steps: int) -> List[int]:
    """"Trailing" spacing, descending: T-1, T-1-T/steps, ... (10 of 1000: 999, 899, ..., 99)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"trailing spacing: steps must be in [1, {num_timesteps}], got {steps}")
    return [int(v) for v in np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1]


def logsnr_timesteps(num_steps: int, alphas_cumprod) -> List[int]:
    """N timesteps uniform in lambda = log(alpha/sigma) from t = T-1 to t = 0 (Lu et al. 2022, sec. 3.3,
    "logSNR" spacing), rounded to integers, made distinct, descending: first T-1, last 0 (N >= 2)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size == 0 or not ((ac > 0).all() and (ac < 1).all()):
        raise ValueError("logsnr spacing: alphas_cumprod must be a non-empty 1-D array in (0, 1)")
    T = len(ac)
    if not 1 <= num_steps <= T:
        raise ValueError(f"logsnr spacing: num_steps must be in [1, {T}], got {num_steps}")
    if num_steps == 1:
        return [T - 1]
    lam = 0.5 * (np.log(ac) - np.log1p(-ac))  # decreasing in t
    grid = np.linspace(lam[-1], lam[0], num_steps)  # increasing: t from T-1 down to 0
    # t(lambda) by linear interpolation over the discrete timesteps (np.interp wants increasing x).
    t = np.round(np.interp(grid, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))).astype(np.int64)
    t[0], t[-1] = T - 1, 0
    # Rounding can merge neighbours where lambda moves fast (the cosine schedule's clipped last
    # beta): push each one below its predecessor, then each one above its successor.
    for i in range(1, num_steps):
        t[i] = min(t[i], t[i - 1] - 1)
    t[-1] = max(t[-1], 0)
    for i in range(num_steps - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    return [int(v) for v in t]


# The samplers ADM's loops do not have (``sampling.samplers``: one ``sample_<name>`` each): a respacing
# spec names them ("dpmpp_2m10l").
SOLVERS = ("dpmpp_2m", "unipc")


def split_sampler(spec) -> Tuple[str, object]:
    """(solver name, the rest of the spec) for ``"dpmpp_2m10l"`` -> ("dpmpp_2m", "10l"); ("", spec)
    for ADM's grammar (and for list specs)."""
    if not isinstance(spec, str):
        return "", spec
    text = spec.strip().lower()
    for name in sorted(SOLVERS, key=len, reverse=True):
        if text.startswith(name):
            rest = text[len(name):]
            if not rest or not rest.rstrip("tl").isdigit() or len(rest) - len(rest.rstrip("tl")) > 1:
                raise ValueError(f"bad timestep respacing {spec!r}: expected '{name}N', '{name}Nt' (trailing) or "
                                 f"'{name}Nl' (log-SNR) with an integer N")
            return name, rest if rest[-1] in "tl" else rest + "t"  # the solvers' default spacing: trailing
    return "", spec


SPACING_SUFFIX = {"trailing": "t", "logsnr": "l", "adm": ""}  # spacing name -> its suffix in a spec


def respacing_spec(sampler: str, steps: int, spacing: str = "trailing") -> str:
    """The spec for ``steps`` evaluations of ``sampler`` (ddim, ancestral or a solver) with ``spacing``:
    ("dpmpp_2m", 10) -> "dpmpp_2m10t", ("ddim", 50, "adm") -> "ddim50", ("ancestral", 20) -> "20t"."""
    prefix = {"ddim": "ddim", "ancestral": ""}.get(sampler, sampler)
    return f"{prefix}{int(steps)}{SPACING_SUFFIX[spacing]}"


def sampler_of(spec) -> str:
    """The solver a respacing spec names (``split_sampler``), "" for ADM's loops."""
    return split_sampler(spec)[0] if spec else ""


def spells_ddim(spec) -> bool:
    """ADM's rule on a respacing spec: DDIM iff it starts with "ddim" (``ddim50``, ``ddim10t``)."""
    return str(spec or "").strip().lower().startswith("ddim")


def sampler_label(spec, eta: float = 0.0) -> str:
    """How reports name a sampler value: ``"ddim50 DDIM eta 0.0"``, ``"250 ancestral"``, ``"dpmpp_2m10l"``
    (a value that starts with "ddim" is DDIM, one that names a solver that solver, a count ancestral)."""
    if sampler_of(spec):
        return str(spec)
    return f"{spec or 'full'} {'DDIM eta ' + str(eta) if spells_ddim(spec) else 'ancestral'}"


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]],
                    alphas_cumprod: Optional[Sequence[float]] = None) -> Set[int]:
    """The set of original timesteps kept by ``section_counts`` (grammar in the module docstring);
    ``alphas_cumprod`` (the original schedule's) is needed by the log-SNR spacing ("...l")."""
    _, spec = split_sampler(section_counts)
    if isinstance(spec, str):
        text = spec.strip().lower()
        suffix = text[-1:]
        if suffix in ("l", "t"):  # log-SNR or trailing spacing of N steps
            digits = text[len("ddim"):-1] if text.startswith("ddim") else text[:-1]
            if not digits.isdigit():
                raise ValueError(f"bad timestep respacing {section_counts!r}: expected 'ddimN{suffix}' or "
                                 f"'N{suffix}' with an integer N")
            if suffix == "t":
                return set(trailing_timesteps(num_timesteps, int(digits)))
            if alphas_cumprod is None:
                raise ValueError(f"timestep respacing {section_counts!r}: log-SNR spacing needs the schedule "
                                 "(alphas_cumprod)")
            if len(alphas_cumprod) != num_timesteps:
                raise ValueError(f"alphas_cumprod has {len(alphas_cumprod)} entries for {num_timesteps} steps")
            return set(logsnr_timesteps(int(digits), alphas_cumprod))
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ValueError(f"bad timestep respacing {spec!r}: expected 'ddimN' with an integer N") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"timestep respacing {spec!r}: no integer stride gives exactly {desired} of {num_timesteps} steps"
            )
        try:
            counts = [int(c) for c in text.split(",")]
        except ValueError:
            raise ValueError(
                f"bad timestep respacing {spec!r}: expected 'ddimN', 'N', 'ddimNt', 'Nt', 'ddimNl', 'Nl', "
                "'dpmpp_2mN', 'unipcN' or comma-separated integers"
            ) from None
    elif isinstance(spec, (list, tuple)):
        counts = list(spec)
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError(f"bad timestep respacing {spec!r}: section counts must be integers")
        counts = [int(c) for c in counts]
    else:
        raise ValueError(f"bad timestep respacing {spec!r}: expected a string or a list of integers")
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"bad timestep respacing {spec!r}: section counts must be >= 0 with a positive sum")
    if len(counts) > num_timesteps:
        raise ValueError(f"timestep respacing {spec!r}: {len(counts)} sections for only {num_timesteps} steps")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"timestep respacing {spec!r}: cannot take {count} steps from a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # round() (half to even) on the accumulated fractional index, exactly as ADM.
        idx = 0.0
        for _ in range(count):
            steps.append(start + round(idx))
            idx += stride
        start += size
    return set(steps)


class SpacedDiffusion(GaussianDiffusion):
    """The diffusion that keeps only ``use_timesteps`` of the one built from ``kwargs``.

    Step k here stands for original timestep ``timestep_map[k]``; its beta is recomputed so the
    kept abar values are unchanged: beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}. The network and
    any cond_fn receive the original timesteps (times 1000 / T_original if ``rescale_timesteps``).

    :param use_timesteps: original timesteps to keep (e.g. from ``space_timesteps``).
    :param sampler: the solver a spec named (``sampler_of``), "" for ADM's loops.
    :param kwargs: ``GaussianDiffusion``'s arguments for the original process.
    """

    def __init__(self, use_timesteps: Iterable[int], sampler: str = "", **kwargs):
        self.sampler = sampler  # "": ADM's loops; else the solver that samples this spacing (``SOLVERS``)
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        self.original_num_steps = len(base_betas)
        self.original_betas = base_betas  # the training schedule (MCMC step sizes are set from it)
        self.use_timesteps = set(int(i) for i in use_timesteps)
        if not self.use_timesteps:
            raise ValueError("use_timesteps is empty")
        bad = sorted(i for i in self.use_timesteps if not 0 <= i < self.original_num_steps)
        if bad:
            raise ValueError(f"use_timesteps outside [0, {self.original_num_steps}): {bad[:5]}")
        base = dm.schedule_from_betas(base_betas)
        betas, self.timestep_map = dm.spaced_betas(base.alphas_cumprod, self.use_timesteps)
        self._map_tensor = torch.tensor(self.timestep_map, dtype=torch.long)
        super().__init__(**{**kwargs, "betas": betas})

    def _scale_timesteps(self, t):
        """Original timesteps for spaced indices t (rescaled to 0..1000 if ``rescale_timesteps``)."""
        new_t = self._map_tensor.to(t.device)[t]
        if self.rescale_timesteps:
            return new_t.float() * (1000.0 / self.original_num_steps)
        return new_t

    def _wrap_model(self, model):
        """ADM's helper: a callable taking spaced indices and calling ``model`` with original timesteps.

        The diffusion's own methods already map timesteps; this is for external code that calls
        the network directly.
        """
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self)


class _WrappedModel:
    def __init__(self, model, diffusion: SpacedDiffusion):
        self.model = model
        self.diffusion = diffusion

    def __call__(self, x, ts, **kwargs):
        return self.model(x, self.diffusion._scale_timesteps(ts), **kwargs)


__all__: List[str] = ["SOLVERS", "SPACING_SUFFIX", "logsnr_timesteps", "respacing_spec", "sampler_label", "sampler_of",
                      "space_timesteps", "split_sampler", "trailing_timesteps", "SpacedDiffusion"]
