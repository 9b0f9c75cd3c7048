"""
Small layer helpers for the UNet, with ADM's (guided-diffusion's) names and semantics.

The network code builds every layer through these helpers so that module types and
parameter shapes stay exactly ADM's, which keeps ADM checkpoints loadable with strict=True.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that computes in at least float32 and returns the input's dtype.

    Autocast is switched off inside, so under bf16/fp16 autocast the statistics are still
    taken in float32 (low-precision variance is what makes mixed-precision diffusion
    training unstable), in the forward and in the backward alike. float64 stays float64
    (ADM's `x.float()` would round it), so gradcheck works on the whole network.
    """

    def forward(self, x):
        if x.device.type == "cpu" and not x.is_contiguous() and not x.requires_grad and torch.is_grad_enabled() \
                and any(p is not None and p.requires_grad for p in (self.weight, self.bias)):
            # torch's CPU channels-last backward crashes (SIGSEGV, torch 2.13) when only the weight and bias
            # want gradients: a GroupNorm behind frozen layers (a method that trains the decoder alone). The
            # contiguous kernel has no such path; the copy is taken only there.
            x = x.contiguous()
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous():
            # The CPU kernel takes bf16 input with fp32 weights and computes the statistics and the
            # normalisation in fp32 itself (forward and backward): no casts of the activations.
            with torch.autocast(device_type="cpu", enabled=False):
                return F.group_norm(x, self.num_groups, self._cast(self.weight, torch.float32),
                                    self._cast(self.bias, torch.float32), self.eps)
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.group_norm(x.to(dtype), self.num_groups, self._cast(self.weight, dtype),
                               self._cast(self.bias, dtype), self.eps)
        return out.to(x.dtype)

    @staticmethod
    def _cast(p, dtype):
        return None if p is None else p.to(dtype)


def normalization(channels, groups=32):
    """ADM's normalization layer: GroupNorm32 with 32 groups over `channels` (``groups`` other than
    ADM's 32: see ``UNetModel``'s ``norm_groups``)."""
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups")
    return GroupNorm32(groups, channels)


def conv_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D convolution module (nn.Conv{dims}d)."""
    if dims == 1:
        return nn.Conv1d(*args, **kwargs)
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def linear(*args, **kwargs):
    """A linear module (nn.Linear)."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D average pooling module (nn.AvgPool{dims}d)."""
    if dims == 1:
        return nn.AvgPool1d(*args, **kwargs)
    if dims == 2:
        return nn.AvgPool2d(*args, **kwargs)
    if dims == 3:
        return nn.AvgPool3d(*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def zero_module(module):
    """Zero every parameter of `module` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module, scale):
    """Multiply every parameter of `module` by `scale` in place and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor):
    """Mean over all dimensions but the first (batch): [N, ...] -> [N]."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def update_ema(target_params, source_params, rate=0.99):
    """In place: target <- rate * target + (1 - rate) * source, parameter by parameter."""
    for targ, src in zip(target_params, source_params):
        targ.detach().mul_(rate).add_(src.detach(), alpha=1 - rate)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embeddings of (possibly fractional) timesteps, exactly as ADM.

    :param timesteps: [N] tensor.
    :param dim: embedding size; an odd `dim` gets one trailing zero column.
    :param max_period: sets the lowest frequency, 1 / max_period.
    :return: [N, dim] float32 tensor `[cos(t * f), sin(t * f)]` with
        `f_i = max_period ** (-i / half)`; the cos half comes first (ADM's order, which
        differs from the sin-first order of the DDPM paper, so checkpoints depend on it).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def checkpoint(fn, *args, enabled):
    """Call `fn(*args)`, recomputing its activations in backward when `enabled`.

    Uses torch's non-reentrant checkpoint, which (unlike ADM's custom Function) keeps the
    autocast state for the recomputation, supports double backward and works with
    parameters that are not passed as arguments. When not enabled this is a plain call.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
