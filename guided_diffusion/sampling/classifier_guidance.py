"""Guidance functions (``cond_fn``) for the samplers of ``GaussianDiffusion``.

A ``cond_fn(x, t, y=None, **kw)`` returns the gradient of a log-probability with respect to x_t,
already multiplied by its scale; ``p_sample`` adds ``variance * grad`` to the mean
(``condition_mean``) and ``ddim_sample`` shifts eps by ``-sqrt(1 - abar_t) * grad``
(``condition_score``). See Dhariwal & Nichol (2021), Algorithms 1 and 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_cond_fn(classifier: torch.nn.Module, scale: float):
    """ADM's classifier guidance: ``scale * grad_x log p(y | x_t, t)`` from a noisy classifier."""

    def cond_fn(x, t, y=None, **kwargs):
        if y is None:
            raise ValueError("classifier guidance needs class labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=logits.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn
