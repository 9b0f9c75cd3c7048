"""The math of the weight-regularisation and gradient baselines of continual learning, as small parts
over a list of parameter tensors (``list(model.parameters())``, or the values of a ``named_parameters``
dict, in a fixed order). No config, no files, no ranks: a continual method composes them.

- ``L2Anchor``: ``lambd * sum_p ||theta_p - theta*_p||^2`` to the previous task's weights.
- ``SynapticIntelligence`` (Zenke, Poole & Ganguli, ICML 2017; ganguli-lab/pathint ``pathint/protocols.py``
  ``PATH_INT_PROTOCOL``, ``pathint/regularizers.py`` ``quadratic_regularizer``): the path integral
  ``omega -= g_unreg * delta_theta`` per optimizer step, ``Omega = relu(Omega + omega / (Delta^2 + xi))``
  at a task's end, penalty ``c * sum Omega (theta - theta*)^2``.
- ``MemoryAwareSynapses`` with ``mas_importance`` / ``diffusion_outputs`` (Aljundi et al., ECCV 2018;
  rahafaljundi/MAS-Memory-Aware-Synapses ``MAS_utils/MAS_based_Training.py``): importance = mean over
  samples of ``|d ||F(x)||_2^2 / d theta|``, summed over tasks, penalty ``lambd * sum Omega (theta - theta*)^2``.
- ``agem_project_`` and ``EpisodicMemory`` (Chaudhry et al., ICLR 2019; facebookresearch/agem
  ``model/model.py`` ``create_stochastic_gem_ops``): the gradient projected onto the half-space of the
  memory's reference gradient, and a seeded, resumable reservoir memory of images and labels.
- ``rehearsal_loss``: the current data's loss plus a coefficient times the buffer's (Zajac et al. 2023,
  arXiv 2303.15342; the definition is ours, see its docstring).

The papers' equation numbers are not cited: their bodies could not be read here (``docs/sources.md``
section 7). Every formula is the authors' code's, read at ganguli-lab/pathint 86c5e07,
rahafaljundi/MAS-Memory-Aware-Synapses c3e6a85, facebookresearch/agem 4542149; CLoG's variants at
linhaowei1/CLoG eaedbf6.
Penalties are returned already multiplied by their strength: the term added to the loss.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch

Params = Sequence[torch.Tensor]


def _zeros(params: Params) -> List[torch.Tensor]:
    return [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in params]


def _copy(params: Params) -> List[torch.Tensor]:
    return [p.detach().clone() for p in params]


def quadratic_penalty(params: Params, anchor: Params, importance: Optional[Params] = None) -> torch.Tensor:
    """``sum_p sum_i importance_p,i (theta_p,i - anchor_p,i)^2`` (importance 1 when None); differentiable in
    ``params``. The quadratic of EWC, SI and MAS, with no 1/2 (pathint's ``quadratic_regularizer``)."""
    total = torch.zeros((), device=params[0].device, dtype=params[0].dtype)
    for i, (p, a) in enumerate(zip(params, anchor)):
        d2 = (p - a) ** 2
        total = total + (d2 if importance is None else importance[i] * d2).sum()
    return total


# ---------------------------------------------------------------------------------------------
# L2 to the previous task's weights

L2_REDUCTIONS = ("sum", "clog")


class L2Anchor:
    """``lambd * sum_p ||theta_p - theta*_p||^2``, theta* the weights at the end of the previous task.

    Zero until the first ``consolidate()``; each ``consolidate()`` (at a task's end) replaces theta*, so
    only the latest task's weights are penalised (CLoG's ``l2`` reads the previous task's model).
    ``reduction="clog"`` is CLoG's form (linhaowei1/CLoG ``networks/diffusion/ddim.py``):
    ``lambd * sum_p F.mse_loss(theta_p, theta*_p)``, the *mean* over each tensor summed over tensors. It
    weighs a tensor of n entries 1/n as much as ``"sum"`` does, so its ``L2_weight=500`` is not a weight
    for ``"sum"``.
    """

    def __init__(self, params: Params, lambd: float, reduction: str = "sum"):
        if reduction not in L2_REDUCTIONS:
            raise ValueError(f"reduction must be one of {L2_REDUCTIONS}, got {reduction!r}")
        self.params = list(params)
        self.lambd = float(lambd)
        self.reduction = reduction
        self.anchor: Optional[List[torch.Tensor]] = None

    def consolidate(self) -> None:
        """At a task's end: theta* = the current weights."""
        self.anchor = _copy(self.params)

    def penalty(self) -> torch.Tensor:
        if self.anchor is None:
            return torch.zeros((), device=self.params[0].device)
        if self.reduction == "sum":
            return self.lambd * quadratic_penalty(self.params, self.anchor)
        total = torch.zeros((), device=self.params[0].device)
        for p, a in zip(self.params, self.anchor):
            total = total + ((p - a) ** 2).mean()
        return self.lambd * total

    def state_dict(self) -> dict:
        return {"anchor": None if self.anchor is None else [a.cpu() for a in self.anchor]}

    def load_state_dict(self, state: dict) -> None:
        a = state["anchor"]
        self.anchor = None if a is None else [t.to(p.device, p.dtype) for t, p in zip(a, self.params)]


# ---------------------------------------------------------------------------------------------
# Synaptic intelligence


class SynapticIntelligence:
    """Synaptic intelligence, as ganguli-lab/pathint's ``PATH_INT_PROTOCOL(omega_decay="sum", xi)``.

    State per parameter: omega (the running path integral of the current task), Omega (the
    consolidated importance), theta* (pathint's ``cweights``: the weights at the start of the current
    task, i.e. the end of the previous one; at construction, the initial weights).

    Per optimizer step, bracket ``optimizer.step()`` with
    - ``before_step(grads, includes_penalty)``: keep g_unreg, the gradient of the *unregularised* loss
      (pathint's ``unreg_grads``), and theta before the step;
    - ``after_step()``: ``omega -= g_unreg * (theta_after - theta_before)``.
    At a task's end, ``consolidate()``: ``Omega = relu(Omega + omega / ((theta - theta*)^2 + xi))``,
    then omega = 0 and theta* = theta. Penalty: ``c * sum Omega (theta - theta*)^2`` (no 1/2).

    g_unreg: with ``includes_penalty=True`` the given gradient is that of ``loss + penalty()`` and the
    penalty's own gradient ``2 c Omega (theta - theta*)`` (``penalty_grads``) is subtracted, which leaves
    the unregularised loss's gradient without a second backward pass. Pass the gradient before any
    clipping or loss scaling. CLoG (``networks/regularize/si.py``) differs: it integrates ``p.grad`` after
    the step (the clipped gradient of the penalised loss; its first call only initialises, so a task's first
    step is left out), adds ``omega / (Delta^2 + xi)`` with no relu, and uses ``xi = si_epsilon = 0.01``,
    ``c = si_weight = 5``. pathint's stored runs use xi 0.1 (permuted MNIST) and 0.001 (split CIFAR).

    Memory: five tensors per parameter (omega, Omega, theta*, and g_unreg and theta of the step in flight).
    """

    def __init__(self, params: Params, c: float, xi: float = 0.1):
        if xi <= 0:
            raise ValueError(f"xi must be > 0, got {xi}")
        self.params = list(params)
        self.c, self.xi = float(c), float(xi)
        self.omega = _zeros(self.params)  # path integral of the current task
        self.importance = _zeros(self.params)  # Omega
        self.anchor = _copy(self.params)  # theta*
        self._grads: Optional[List[torch.Tensor]] = None
        self._before: Optional[List[torch.Tensor]] = None

    def penalty(self) -> torch.Tensor:
        return self.c * quadratic_penalty(self.params, self.anchor, self.importance)

    def penalty_grads(self) -> List[torch.Tensor]:
        """d penalty / d theta = ``2 c Omega (theta - theta*)``."""
        return [2 * self.c * o * (p.detach() - a) for p, o, a in zip(self.params, self.importance, self.anchor)]

    @torch.no_grad()
    def before_step(self, grads: Sequence[Optional[torch.Tensor]], includes_penalty: bool) -> None:
        """Keep g_unreg and theta before ``optimizer.step()``; ``grads[i]`` is params[i]'s gradient (None: 0)."""
        unreg = [torch.zeros_like(p) if g is None else g.detach().clone() for p, g in zip(self.params, grads)]
        if includes_penalty:
            for u, pg in zip(unreg, self.penalty_grads()):
                u.sub_(pg)
        self._grads, self._before = unreg, _copy(self.params)

    @torch.no_grad()
    def after_step(self) -> None:
        """``omega -= g_unreg * (theta - theta_before)`` for the step just taken."""
        if self._grads is None:
            raise RuntimeError("after_step() without before_step()")
        for w, g, p, b in zip(self.omega, self._grads, self.params, self._before):
            w.sub_(g * (p.detach() - b))
        self._grads = self._before = None

    @torch.no_grad()
    def consolidate(self) -> None:
        """At a task's end: ``Omega = relu(Omega + omega / (Delta^2 + xi))``, omega = 0, theta* = theta."""
        for o, w, p, a in zip(self.importance, self.omega, self.params, self.anchor):
            o.copy_(torch.relu(o + w / ((p.detach() - a) ** 2 + self.xi)))
            w.zero_()
            a.copy_(p.detach())

    def state_dict(self) -> dict:
        return {"omega": [t.cpu() for t in self.omega], "importance": [t.cpu() for t in self.importance],
                "anchor": [t.cpu() for t in self.anchor]}

    def load_state_dict(self, state: dict) -> None:
        for key in ("omega", "importance", "anchor"):
            setattr(self, key, [t.to(p.device, p.dtype) for t, p in zip(state[key], self.params)])
        self._grads = self._before = None


# ---------------------------------------------------------------------------------------------
# Memory aware synapses


def mas_importance(params: Params, outputs: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    """MAS's importance of one task: ``(1/n) sum_batches |d sum_{i in batch} ||F(x_i)||_2^2 / d theta|``.

    ``outputs`` yields the network's outputs F(x) of one batch at a time, each still attached to the
    graph of ``params`` (``diffusion_outputs`` makes them for a diffusion model); n is the number of
    samples over all batches. This is MAS's ``compute_importance_l2`` with ``MAS_Omega_update``: the loss
    ``MSELoss(size_average=False)(F(x), 0)`` is the summed *squared* L2 norm, and each batch adds the
    absolute value of its gradient to a running average over the samples seen. With batches of one sample
    (the official ``b1=True``, the default of ``MAS_Omega_Acuumelation``) it is the paper's mean over samples
    of the per-sample ``|dF/dtheta|``; larger batches take the absolute value of a sum of gradients, which
    is smaller (``|a + b| <= |a| + |b|``), as the official code does then. CLoG (``ddim.py``) instead uses
    ``sum(noise_pred.norm(2, dim=-1))`` (a non-squared norm of each image row) on whole batches, and its
    penalty halves the quadratic.
    """
    total = _zeros(params)
    n = 0
    for out in outputs:
        grads = torch.autograd.grad(out.pow(2).sum(), list(params), allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc.add_(g.detach().abs())
        n += out.shape[0]
    if n == 0:
        raise ValueError("mas_importance needs at least one sample")
    return [t / n for t in total]


def diffusion_outputs(model, diffusion, x0: torch.Tensor, y: Optional[torch.Tensor], seed: int,
                      batch_size: int = 1, device=None):
    """Yield the network's outputs on noisy images, ``batch_size`` at a time: F(x) for MAS.

    For a diffusion model the function F is the network on (x_t, t): each image gets its own t uniform
    over the training steps [0, T) and fresh noise, x_t = q_sample(x0, t, noise). That is the input
    distribution the network is trained on (ADM's uniform t sampler), so the importance averages the
    output's sensitivity over the same (x_t, t) the diffusion loss weighs; a fixed t would measure one
    noise level only. The whole output is used (eps, and the variance channels of a learned-sigma
    network): MAS measures the learned function, not a loss. t and noise come from a CPU generator seeded
    with ``seed`` (the same draws on any device). The model is in eval mode meanwhile (no dropout noise, as
    the official ``compute_importance_l2``) and is put back after the last batch.
    """
    device = device if device is not None else x0.device
    gen = torch.Generator().manual_seed(int(seed))
    was = model.training
    model.eval()
    try:
        for s in range(0, len(x0), batch_size):
            xb = x0[s:s + batch_size]
            t = torch.randint(0, diffusion.num_timesteps, (len(xb),), generator=gen)
            noise = torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
            t, xb, noise = t.to(device), xb.to(device), noise.to(device)
            kwargs = {} if y is None else {"y": y[s:s + batch_size].to(device)}
            yield model(diffusion.q_sample(xb, t, noise=noise), diffusion.model_timesteps(t), **kwargs)
    finally:
        model.train(was)


class MemoryAwareSynapses:
    """MAS's penalty ``lambd * sum Omega (theta - theta*)^2`` (the official ``Weight_Regularized_SGD`` adds
    its gradient ``2 lambd Omega (theta - theta*)``; CLoG's has a 1/2).

    ``consolidate(task_importance)`` at a task's end: ``Omega = Omega + task_importance`` and theta* = the
    current weights. Over tasks the importances *add*, as the official ``accumelate_reg_params`` (used by
    ``MAS_sequence`` and ``MAS_Omega_Acuumelation``) adds the new task's running average to the stored one;
    within a task ``mas_importance`` is the running average over that task's samples. (A running average
    over all samples ever seen would weigh old tasks less as tasks accumulate; the official code does not.)
    """

    def __init__(self, params: Params, lambd: float):
        self.params = list(params)
        self.lambd = float(lambd)
        self.importance = _zeros(self.params)
        self.anchor: Optional[List[torch.Tensor]] = None

    def consolidate(self, task_importance: Params) -> None:
        for o, t in zip(self.importance, task_importance):
            o.add_(t.detach().to(o.device, o.dtype))
        self.anchor = _copy(self.params)

    def penalty(self) -> torch.Tensor:
        if self.anchor is None:
            return torch.zeros((), device=self.params[0].device)
        return self.lambd * quadratic_penalty(self.params, self.anchor, self.importance)

    def state_dict(self) -> dict:
        return {"importance": [t.cpu() for t in self.importance],
                "anchor": None if self.anchor is None else [t.cpu() for t in self.anchor]}

    def load_state_dict(self, state: dict) -> None:
        self.importance = [t.to(p.device, p.dtype) for t, p in zip(state["importance"], self.params)]
        a = state["anchor"]
        self.anchor = None if a is None else [t.to(p.device, p.dtype) for t, p in zip(a, self.params)]


# ---------------------------------------------------------------------------------------------
# A-GEM


@torch.no_grad()
def agem_project_(grads: Sequence[Optional[torch.Tensor]], ref_grads: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """A-GEM's projection, in place: ``g <- g - (g.g_ref / g_ref.g_ref) g_ref`` if ``g.g_ref < 0``, else g.

    g and g_ref are the concatenations of the per-parameter tensors (None counts as zeros), but no
    concatenated copy is made: the dot products are summed tensor by tensor and each ``grads[i]`` is
    updated in place (facebookresearch/agem ``model/model.py``: ``dotp``, ``ref_mag``, ``proj``, kept when
    ``dotp >= 0``). Afterwards ``g.g_ref >= 0``, and ``= 0`` up to rounding where it projected. No host
    sync: the choice is a ``torch.where``, and a compatible g gets ``0 * g_ref`` added (unchanged). Returns
    the 0-d bool tensor "projected" (the official ``violation_count`` counts them). With several ranks,
    all-reduce both gradients first. CLoG (``networks/replay/agem.py``) back-propagates the memory's loss
    onto grads it did not zero, so its g_ref is g + g_ref (``docs/sources.md`` section 5); its ``project`` also
    subtracts dicts of tensors (``gxy - corr * ger``), which raises as soon as a projection is due.
    """
    pairs = [(g, r) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    if not pairs:
        return torch.zeros((), dtype=torch.bool)
    dot = sum((g.double() * r.double()).sum() for g, r in pairs)
    ref = sum((r.double() * r.double()).sum() for _, r in pairs)
    projected = dot < 0
    coef = torch.where(projected, dot / torch.where(ref > 0, ref, torch.ones_like(ref)), torch.zeros_like(dot))
    for g, r in pairs:
        g.sub_(coef.to(g.dtype) * r)
    return projected


class EpisodicMemory:
    """A fixed-size memory of (image, label) pairs filled by reservoir sampling (Vitter's algorithm R) over
    the stream of all images offered with ``add``: every image offered so far is kept with the same chance
    ``size / seen``. CLoG's A-GEM and experience replay keep ``memory_size = 200``.

    One ``torch.Generator`` seeded with ``seed`` makes both the reservoir's choices and ``sample``'s, so the
    content after a given sequence of calls is a function of the seed; ``state_dict`` holds the images,
    labels, the count seen and the generator's state, and a memory loaded from it continues exactly as the
    saved one would have. Images are stored on the device they are given on.
    """

    def __init__(self, size: int = 200, seed: int = 0):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.seen = 0
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self.x is None else len(self.x)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer a batch, in order: the k-th image of the stream fills a free slot, or else replaces slot
        j, drawn uniformly from [0, k], when j < size."""
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        x, y = x.detach(), y.detach()
        free = max(0, min(self.size - len(self), len(x)))
        if free:
            self.x = x[:free].clone() if self.x is None else torch.cat([self.x, x[:free]])
            self.y = y[:free].clone() if self.y is None else torch.cat([self.y, y[:free]])
        rest = len(x) - free
        if rest:
            # k-th item (0-based, counted over the whole stream) draws j uniform in [0, k].
            k = torch.arange(self.seen + free, self.seen + len(x), dtype=torch.float64)
            j = (torch.rand(rest, generator=self.gen, dtype=torch.float64) * (k + 1)).floor().long()
            for i, slot in enumerate(j.tolist()):  # in stream order: a later image wins a slot
                if slot < self.size:
                    self.x[slot] = x[free + i]
                    self.y[slot] = y[free + i]
        self.seen += len(x)

    def sample(self, n: int):
        """``min(n, len)`` stored pairs drawn without replacement, in random order (the whole memory
        when n >= len, as CLoG's 256 requested of 200)."""
        if len(self) == 0:
            raise ValueError("the memory is empty")
        idx = torch.randperm(len(self), generator=self.gen)[: min(n, len(self))].to(self.x.device)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"size": self.size, "seen": self.seen, "rng": self.gen.get_state(),
                "x": None if self.x is None else self.x.cpu(), "y": None if self.y is None else self.y.cpu()}

    def load_state_dict(self, state: dict, device=None) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"a memory of {state['size']} cannot load into one of {self.size}")
        self.seen = int(state["seen"])
        self.gen.set_state(state["rng"])
        self.x = None if state["x"] is None else state["x"].to(device or "cpu")
        self.y = None if state["y"] is None else state["y"].to(device or "cpu")


# ---------------------------------------------------------------------------------------------
# Rehearsal coefficient


def rehearsal_loss(losses: torch.Tensor, from_buffer: torch.Tensor, coef: float) -> torch.Tensor:
    """``L = mean(losses of the current task's samples) + coef * mean(losses of the buffer's samples)``.

    ``losses``: one loss per sample of a batch that holds both (the diffusion loss of each image);
    ``from_buffer``: a bool mask of the buffer's samples. An empty part contributes 0.

    THE DEFINITION IS OURS, pending the paper. Zajac et al. 2023 ("Exploring Continual Learning of
    Diffusion Models", arXiv 2303.15342) report "the strong performance of the experience replay with the
    reduced rehearsal coefficient" (abstract), but how the coefficient enters their loss could not be read
    here: only the abstract and the first paragraph of the introduction are stored (ar5iv, arxiv.org/abs,
    emergentmind), and no code of theirs was found. This is the natural reading, ``L_current + lambda *
    L_buffer`` with each part the mean over its own samples, so lambda = 1 weighs the buffer as much as the
    current task whatever their shares of the batch. Another reading, each buffer sample weighted by lambda
    inside one batch mean, gives ``(n_cur / n) mean_cur + lambda (n_buf / n) mean_buf``: proportional to
    this one only when the two parts have the same size.
    """
    from_buffer = from_buffer.to(torch.bool)
    if losses.shape != from_buffer.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and mask {tuple(from_buffer.shape)} differ")
    current, buffer = losses[~from_buffer], losses[from_buffer]
    zero = losses.new_zeros(())
    return (current.mean() if len(current) else zero) + coef * (buffer.mean() if len(buffer) else zero)
