"""Energy-based parameterisation of an eps-network (Du et al. 2023, "Reduce, Reuse, Recycle", sec. 3).

The network's output ``s = net(x, t, y)`` (first C channels) defines a scalar energy per sample,

    dae:  E(x, t, y) = 0.5 * ||x - s||^2
    l2:   E(x, t, y) = 0.5 * ||s||^2

and the model's prediction is its input gradient, ``eps = dE/dx`` (or x0 for an x0-predicting
diffusion: the prediction is whatever the diffusion expects, it is just a gradient now). Trained
with the usual diffusion loss, the energy is a log-density up to scale: for an eps prediction the
score of the noisy data at level t is ``-eps / sigma_t`` with ``sigma_t = sqrt(1 - abar_t)``, so
``log p_t(x) = -E(x, t) / sigma_t + const`` (``mcmc.log_density``), which is what Metropolis-corrected
samplers (MALA, HMC) need and a plain eps-network cannot give.

``EnergyModel`` wraps any network with the ``(x, t, y=None)`` interface; the network itself knows
nothing of energies. The gradient is taken with ``create_graph`` whenever the caller has grad mode
on (training, the EWC Fisher, guidance through the network), so the loss can be backpropagated
through it (a double backward: the UNet's attention switches itself to twice-differentiable ops,
``unet.double_backward_attention``); under ``no_grad``/``inference_mode`` (sampling, teachers) only
the first-order gradient is taken and the result is detached.

Cost: one forward and one backward of the network per prediction (about 3x a score model's
forward), plus the double backward in training (about 2x a score model's training step).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .unet import double_backward_attention

ENERGY_FORMS = ("dae", "l2")


def energy_from_output(x: torch.Tensor, s: torch.Tensor, form: str) -> torch.Tensor:
    """Per-sample energy [N] from the network output ``s`` (first C channels) at input ``x``."""
    if form == "dae":
        d = x - s
    elif form == "l2":
        d = s
    else:
        raise ValueError(f"energy form must be one of {', '.join(ENERGY_FORMS)}, got {form!r}")
    return 0.5 * at_least_float32(d).pow(2).flatten(1).sum(1)


def at_least_float32(v: torch.Tensor) -> torch.Tensor:
    """``v`` in float32 if it is in a lower precision (fp16/bf16); float64 stays float64."""
    return v.to(torch.promote_types(v.dtype, torch.float32))


def _init_zero_output(net: nn.Module) -> bool:
    """Re-initialise the network's last Conv/Linear layer if it is all zeros (ADM's ``zero_module``
    output, DiT's zero final projection); returns whether it did.

    The ``l2`` energy needs it: with a zero output layer W, ``s = W h`` and ``ds/dx = W dh/dx``, so
    the prediction ``(ds/dx)^T s`` is quadratic in W and the loss gradient of *every* parameter is
    exactly zero at initialisation: the model would never train. (``dae`` is fine: at W = 0 the
    prediction is x and the output layer gets a gradient.)
    """
    last = None
    for mod in net.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            last = mod
    if last is None or bool(last.weight.detach().any()):
        return False
    last.reset_parameters()
    return True


def _normal(v):
    """A tensor usable in autograd outside inference mode (inference tensors are cloned)."""
    if isinstance(v, torch.Tensor) and torch.is_inference(v):
        return v.clone()
    return v


class EnergyModel(nn.Module):
    """``forward(x, t, y)`` = dE/dx of the energy defined by ``net``'s output (see module docstring).

    ``energy(x, t, y)`` is the per-sample energy [N]; ``energy_and_grad`` gives both from one
    forward and backward. The state_dict is the wrapped network's under the prefix ``net.``.
    """

    def __init__(self, net: nn.Module, form: str = "dae"):
        super().__init__()
        if form not in ENERGY_FORMS:
            raise ValueError(f"energy form must be one of {', '.join(ENERGY_FORMS)}, got {form!r}")
        self.net = net
        self.form = form
        if form == "l2":
            _init_zero_output(net)  # else the l2 energy has an all-zero gradient at initialisation

    is_energy = True  # energies are available (``is_energy_model``)

    def energy(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """Per-sample energy [N] (differentiable when grad mode is on)."""
        kw = dict(kwargs)
        if y is not None:
            kw["y"] = y
        s = self.net(x, t, **kw)[:, : x.shape[1]]
        return energy_from_output(x, s, self.form)

    def energy_and_grad(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                        create_graph: Optional[bool] = None, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E [N], dE/dx like x). ``create_graph`` defaults to the caller's grad mode.

        Works under ``torch.inference_mode``/``no_grad`` too (grad is enabled locally, inference
        tensors are cloned); then both results are detached.
        """
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad(), double_backward_attention(create_graph):
            if create_graph and x.requires_grad:
                x_in = x  # the caller differentiates through x (e.g. guidance through the network)
            else:
                x_in = _normal(x).detach().requires_grad_(True)
            t_in = _normal(t)
            y_in = _normal(y)
            kw = {k: _normal(v) for k, v in kwargs.items()}
            e = self.energy(x_in, t_in, y_in, **kw)
            (grad,) = torch.autograd.grad(e.sum(), x_in, create_graph=create_graph)
        if not create_graph:
            e, grad = e.detach(), grad.detach()
        return e, grad

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        return self.energy_and_grad(x, t, y, **kwargs)[1]


def is_energy_model(model) -> bool:
    """Whether ``model`` (or a guidance/composition wrapper around one) can give energies."""
    return bool(getattr(model, "is_energy", False))
