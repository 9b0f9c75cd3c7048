"""Training and evaluating the noisy classifier used for guidance (ADM's classifier_train recipe)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from ..train_util import StepContext


class NoisyClassifierObjective:
    """Cross-entropy of ``classifier(q_sample(x0, t), t)``; t from the schedule sampler (or 0)."""

    def __init__(self, diffusion, schedule_sampler, noised: bool = True):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler
        self.noised = noised

    def __call__(self, model, x, y, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if self.noised:
            t, _ = self.schedule_sampler.sample(x.shape[0], x.device, generator=ctx.generator)
            noise = torch.randn(x.shape, generator=ctx.generator).to(x.device)
            x = self.diffusion.q_sample(x, t, noise=noise)
        else:
            t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        logits = model(x, t)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}


@torch.no_grad()
def evaluate_noisy(classifier, diffusion, x, y, t_values=(0, None), batch_size=256, seed=0) -> Dict[str, float]:
    """Accuracy and loss on (x, y), clean (t=0) and at uniformly random t (``None``)."""
    was = classifier.training
    classifier.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(classifier.parameters()).device
    out = {}
    for tv in t_values:
        correct, loss, n = 0.0, 0.0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            if tv is None:
                t = torch.randint(0, diffusion.num_timesteps, (len(xb),), generator=gen)
            else:
                t = torch.full((len(xb),), tv, dtype=torch.long)
            noise = torch.randn(xb.shape, generator=gen)
            xt = diffusion.q_sample(xb, t, noise=noise) if tv != 0 else xb
            logits = classifier(xt.to(device), t.to(device)).float().cpu()
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(-1) == yb).sum().item()
            n += len(xb)
        name = "t0" if tv == 0 else ("trand" if tv is None else f"t{tv}")
        out[f"val_acc_{name}"] = correct / max(1, n)
        out[f"val_loss_{name}"] = loss / max(1, n)
    classifier.train(was)
    return out
