"""GUIDE's guidance of replayed old-class samples, and how the previous classifier judges the replay."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ...runtime.config import ConfigError




def guide_cond_fn(clf, prev_clf, seen_mask, new_classes, old_mask, scales, g, trim: bool, noised: bool = False):
    """GUIDE's guidance function with its flags' semantics (cywinski/guide); returns
    ``scale * grad log-objective`` per sample, or None when neither gradient is asked (GUIDE then
    returns a zero gradient: plain sampling).

    - ``use_new_grad`` with ``guid_to_new_classes``: log p_clf(target | x), target = the new class
      with the largest logit of the classifier being trained (toward the current decision region);
    - ``use_new_grad`` alone: -log p_clf(y | x), away from the conditioning old class y;
    - ``use_old_grad``: log p_prev(y | x) under the classifier after the previous task, over the old
      classes (toward y); ``negate_old_grad`` flips its sign;
    - both: refused, as GUIDE (its ``NotImplementedError``).

    x is the predicted x̂0(x_t), so the gradient flows through the diffusion network, or, when
    ``noised``, x_t itself, with each classifier given the timestep (ADM's classic guidance,
    GUIDE's ``train_noised_classifier``). ``g``: the flags (``solver.guided``, ``replays.GuidedOptions``).
    ``trim`` (``solver.trim_logits``): logits outside the classes seen so far
    (the old classes for the previous classifier) are masked, as GUIDE slices them.
    """
    if g.use_old_grad and g.use_new_grad:
        raise ConfigError("solver.guided.use_old_grad and solver.guided.use_new_grad cannot both be true (as in GUIDE)")
    if not (g.use_old_grad or g.use_new_grad):
        return None
    new = torch.as_tensor(list(new_classes), device=seen_mask.device)

    def logits_of(net, x_in, t, mask):
        out = (net(x_in, t) if noised else net(x_in)).float()
        return out.masked_fill(~mask, float("-inf")) if trim else out

    def objective(x_in, t, y):
        rows = torch.arange(len(y), device=y.device)
        if g.use_old_grad:
            obj = F.log_softmax(logits_of(prev_clf, x_in, t, old_mask), dim=-1)[rows, y]
            return -obj if g.negate_old_grad else obj
        logits = logits_of(clf, x_in, t, seen_mask)
        logp = F.log_softmax(logits, dim=-1)
        if g.guid_to_new_classes:
            return logp[rows, new[logits[:, new].argmax(dim=1)]]
        return -logp[rows, y]

    def scaled(grad):
        return scales.to(grad.device).view(-1, 1, 1, 1) * grad

    if noised:
        def cond_fn(x, t, y=None, **kwargs):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                return scaled(torch.autograd.grad(objective(x_in, t, y).sum(), x_in)[0])
        return cond_fn

    def cond_fn(x, t, pred_xstart=None, y=None, **kwargs):
        return scaled(torch.autograd.grad(objective(pred_xstart, t, y).sum(), x)[0])

    cond_fn.needs_pred_xstart = True
    return cond_fn


@torch.no_grad()
def replay_judgement(prev_clf, x: torch.Tensor, y: torch.Tensor, old_mask: torch.Tensor) -> Tuple[float, float]:
    """How the classifier after the previous task judges replayed images of old classes: the share
    whose argmax over the old classes is the conditioning label, and the mean entropy (nats) of its
    softmax over the old classes."""
    logits = prev_clf(x).float().masked_fill(~old_mask, float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp.masked_fill(~old_mask, 0.0)).sum(-1)
    return float((logits.argmax(-1) == y).float().mean()), float(entropy.mean())
