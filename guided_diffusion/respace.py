"""Timestep respacing: sample or train on a subset of a diffusion's timesteps (Nichol & Dhariwal 2021, sec. 4).

``space_timesteps(T, spec)`` picks the subset; ``SpacedDiffusion`` is the diffusion over it. The
spec grammar is ADM's:

- ``"ddimN"``: the DDIM striding {0, i, 2i, ...} with the integer stride i that gives exactly N
  steps (``"ddim50"`` on 1000 steps: stride 20); ValueError when no such stride exists. This
  "leading" spacing starts sampling at t = T - i (``ddim10``: 900 of 1000).
- ``"ddimNt"`` or ``"Nt"`` (not ADM's): N "trailing" steps, T-1, T-1-T/N, ... (``ddim10t``: 999,
  899, ..., 99), the spacing of diffusers' ``timestep_spacing="trailing"`` that Masip et al. sample
  with: the first step starts from pure noise at the last timestep. ``ddim`` picks DDIM by the
  use_ddim rule, as for ``ddimN``.
- ``"N"`` or ``"a,b,c"``: split the T steps into len(counts) nearly equal sections (the first
  T mod len sections one step longer) and take ``count`` evenly spaced (rounded) steps in each.
- a list or tuple of ints: the section counts of the previous form.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Union

import numpy as np
import torch

from . import diffusion_math as dm
from .gaussian_diffusion import GaussianDiffusion


def trailing_timesteps(num_timesteps: int, steps: int) -> List[int]:
    """"Trailing" spacing, descending: T-1, T-1-T/steps, ... (10 of 1000: 999, 899, ..., 99)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"trailing spacing: steps must be in [1, {num_timesteps}], got {steps}")
    return [int(v) for v in np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1]


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> Set[int]:
    """The set of original timesteps kept by ``section_counts`` (grammar in the module docstring)."""
    spec = section_counts
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text.endswith("t"):
            digits = text[len("ddim"):-1] if text.startswith("ddim") else text[:-1]
            if not digits.isdigit():
                raise ValueError(f"bad timestep respacing {spec!r}: expected 'ddimNt' or 'Nt' with an integer N")
            return set(trailing_timesteps(num_timesteps, int(digits)))
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
                f"bad timestep respacing {spec!r}: expected 'ddimN', 'N', 'ddimNt', 'Nt' or comma-separated integers"
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
    :param kwargs: ``GaussianDiffusion``'s arguments for the original process.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
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


__all__: List[str] = ["space_timesteps", "trailing_timesteps", "SpacedDiffusion"]
