"""Classifier-free guidance (Ho & Salimans 2022) and compositional generation (Du et al. 2023).

Training: with probability ``uncond_p`` a sample's label is replaced by the *null class*, an extra
label row ``num_classes`` of the class embedding (``drop_labels``; the training objective draws the
mask from the step's generator). One network then predicts both eps(x, t, c) and eps(x, t, null).

Sampling, as model wrappers that any sampler (DDPM, DDIM, the replay generators, MCMC) can call
like the network itself:

- ``cfg_model(model, w, null_class)``: ``eps = eps_u + w * (eps_c - eps_u)``. This is the
  convention of Continual-Diffusers (and diffusers): ``guidance_scale`` 1 is plain conditional
  sampling, 0 unconditional, > 1 guided (their default 7.5). ADM-style papers write the same thing
  as ``(1 + w') eps_c - w' eps_u`` with ``w' = w - 1``.
- ``composed_model(model, labels, weights, null_class)``: a product of conditionals
  ``p(x) prod_i (p(x | c_i) / p(x))^{w_i}`` (Du et al. 2023, eq. 11; Liu et al. 2022):
  ``eps = eps_u + sum_i w_i (eps_{c_i} - eps_u)``. Without a null class (a model trained with
  ``uncond_p = 0``) the product of tempered conditionals ``prod_i p(x | c_i)^{w_i}`` is used instead:
  ``eps = sum_i w_i eps_{c_i}``. The label ``y`` given to the wrapper is ignored.

All branches run in one batched network call. For an energy model (``energy.EnergyModel``) the
wrappers combine energies the same way (``energy``, ``energy_and_grad``), so Metropolis-corrected
samplers see the energy of the guided or composed distribution. A learned-variance output keeps the
(first) conditional branch's variance channels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn


def null_class_of(cfg, num_classes: int) -> Optional[int]:
    """The null label of a config's model (``num_classes``), or None without CFG training."""
    if not cfg.model.class_cond or cfg.train.uncond_p <= 0:
        return None
    return cfg.model.num_classes or num_classes


def drop_labels(y: torch.Tensor, p: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """``y`` with each label replaced by ``null_class`` with probability ``p`` (one draw per label)."""
    drop = torch.rand(y.shape[0], generator=generator).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def _combine(parts: torch.Tensor, coef: Sequence[float], base: Optional[int], C: int) -> torch.Tensor:
    """sum_i coef_i part_i (+ (1 - sum coef) part_base); extra channels from part 0. parts: [K, N, ...]."""
    out = parts[base] * (1.0 - sum(coef)) if base is not None else torch.zeros_like(parts[0])
    for i, w in enumerate(coef):
        out = out + w * parts[i]
    if out.dim() > 2 and parts.shape[2] > C:  # learned variance: keep the first branch's
        out = torch.cat([out[:, :C], parts[0][:, C:]], dim=1)
    return out


class _Mixture(nn.Module):
    """Runs ``model`` on K label branches at once and combines them linearly (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _branches(self, y: Optional[torch.Tensor], n: int, device):
        """[K, N] labels, the coefficients of the non-base branches, and the base branch index."""
        raise NotImplementedError

    def _run(self, fn, x, t, y, kwargs):
        labels, coef, base = self._branches(y, x.shape[0], x.device)
        k = labels.shape[0]
        rep = lambda v: v.repeat(k, *([1] * (v.dim() - 1)))  # noqa: E731
        extra = {key: rep(v) if isinstance(v, torch.Tensor) else v for key, v in kwargs.items()}
        out = fn(rep(x), rep(t), y=labels.reshape(-1), **extra)
        return out, k, coef, base

    def forward(self, x, t, y=None, **kwargs):
        out, k, coef, base = self._run(self.model, x, t, y, kwargs)
        return _combine(out.reshape(k, x.shape[0], *out.shape[1:]), coef, base, x.shape[1])

    def energy_and_grad(self, x, t, y=None, **kwargs):
        (e, g), k, coef, base = self._run(self.model.energy_and_grad, x, t, y, kwargs)
        n = x.shape[0]
        return (_combine(e.reshape(k, n), coef, base, 1),
                _combine(g.reshape(k, n, *g.shape[1:]), coef, base, x.shape[1]))

    def energy(self, x, t, y=None, **kwargs):
        e, k, coef, base = self._run(self.model.energy, x, t, y, kwargs)
        return _combine(e.reshape(k, x.shape[0]), coef, base, 1)

    @property
    def is_energy(self) -> bool:
        """Whether energies are available (the wrapped model is an energy model)."""
        return bool(getattr(self.model, "is_energy", False))


class CFGModel(_Mixture):
    """``eps_u + scale * (eps_c - eps_u)`` from one batched call on (y, null)."""

    def __init__(self, model: nn.Module, scale: float, null_class: int):
        super().__init__(model)
        self.scale = float(scale)
        self.null_class = int(null_class)

    def _branches(self, y, n, device):
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y")
        return torch.stack([y, torch.full_like(y, self.null_class)]), [self.scale], 1


class ComposedModel(_Mixture):
    """A product of the conditionals of ``labels`` with exponents ``weights`` (module docstring)."""

    def __init__(self, model: nn.Module, labels: Sequence[int], weights: Optional[Sequence[float]] = None,
                 null_class: Optional[int] = None):
        super().__init__(model)
        if not labels:
            raise ValueError("composition needs at least one label")
        weights = list(weights) if weights else [1.0] * len(labels)
        if len(weights) != len(labels):
            raise ValueError(f"composition: {len(labels)} labels but {len(weights)} weights")
        self.labels = [int(c) for c in labels]
        self.weights = [float(w) for w in weights]
        self.null_class = None if null_class is None else int(null_class)

    def _branches(self, y, n, device):
        rows = [torch.full((n,), c, dtype=torch.long, device=device) for c in self.labels]
        if self.null_class is None:
            return torch.stack(rows), self.weights, None
        rows.append(torch.full((n,), self.null_class, dtype=torch.long, device=device))
        return torch.stack(rows), self.weights, len(rows) - 1


def cfg_model(model: nn.Module, scale: float, null_class: Optional[int]) -> nn.Module:
    """``model`` guided with ``scale`` (the model itself when scale is 1: plain conditional)."""
    if scale == 1.0:
        return model
    if null_class is None:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (train.uncond_p > 0)")
    return CFGModel(model, scale, null_class)


def composed_model(model: nn.Module, labels: Sequence[int], weights: Optional[Sequence[float]] = None,
                   null_class: Optional[int] = None) -> nn.Module:
    """The product of the conditionals of ``labels`` (see ``ComposedModel``)."""
    return ComposedModel(model, labels, weights, null_class)
