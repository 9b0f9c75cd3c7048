"""Prompt conditioning of a text-conditional network (GLIDE-style, ``UNetModel(text_dim=...)``) by
label: ``PromptConditioned`` holds a table of encoded prompts (one per class, and the empty prompt
for classifier-free guidance's null class) and gives the network the row of each sample's label.

So everything that conditions on labels (replay of old classes, buffers, per-class grids and
evaluation, classifier-free guidance) conditions a text model through its class prompts
unchanged, and ``set_prompts`` swaps the table to sample from any other prompts. The table is a
non-persistent buffer: the state_dict is the network's (under ``net.``), the prompts are in the
config. The network knows nothing of the text encoder; ``text_encoder`` makes the tables.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PromptConditioned(nn.Module):
    """``forward(x, t, y)`` = ``net(x, t, text=(states[y], pooled[y]))``, centred.

    ``center`` (default): the network gets each prompt's encoding minus what the run's prompts share,
    scaled to unit size -- the pooled state minus the mean pooled state of the table it is built with,
    divided by those differences' mean norm; the token states minus their mean at each token position,
    divided by those differences' RMS norm. A sentence encoder puts prompts that differ in one word
    close together (all-MiniLM-L6-v2: mean cosine 0.82 between "a handwritten digit zero" .. "nine";
    -0.11 once centred), so without it the network starts from nearly the same condition for every
    class and must first learn to amplify the difference. The centring is fixed at construction (from
    the class prompts of the config, so a rebuilt model gets the same); prompts added later
    (``set_prompts``: sampling from new text) are centred with it, as any other linear input map.
    """

    def __init__(self, net: nn.Module, states: torch.Tensor, pooled: torch.Tensor, center: bool = True):
        super().__init__()
        self.net = net
        self.register_buffer("states", torch.empty(0), persistent=False)
        self.register_buffer("pooled", torch.empty(0), persistent=False)
        self.set_prompts(states, pooled)
        self.center = bool(center)
        pm, sm = self.pooled.mean(0), self.states.mean(0)
        p_scale = (self.pooled - pm).norm(dim=-1).mean().clamp_min(1e-6) if center else torch.ones(())
        s_scale = (self.states - sm).norm(dim=-1).pow(2).mean().sqrt().clamp_min(1e-6) if center else torch.ones(())
        self.register_buffer("pooled_shift", pm if center else torch.zeros_like(pm), persistent=False)
        self.register_buffer("states_shift", sm if center else torch.zeros_like(sm), persistent=False)
        self.register_buffer("pooled_scale", p_scale, persistent=False)
        self.register_buffer("states_scale", s_scale, persistent=False)

    def set_prompts(self, states: torch.Tensor, pooled: torch.Tensor) -> None:
        """The table of encoded prompts: states [K, S, D], pooled [K, D]; label k picks row k."""
        if states.ndim != 3 or pooled.shape != (states.shape[0], states.shape[2]):
            raise ValueError(f"prompt table: states [K, S, D] and pooled [K, D], got {tuple(states.shape)} and "
                             f"{tuple(pooled.shape)}")
        device = next(self.net.parameters()).device
        self.states = states.to(device, torch.float32)
        self.pooled = pooled.to(device, torch.float32)

    @property
    def num_prompts(self) -> int:
        return self.states.shape[0]

    def forward(self, x, timesteps, y=None, **kwargs):
        if y is None:
            raise ValueError("a prompt-conditioned model needs y: the index of each sample's prompt")
        states = (self.states[y] - self.states_shift) / self.states_scale
        pooled = (self.pooled[y] - self.pooled_shift) / self.pooled_scale
        return self.net(x, timesteps, text=(states, pooled), **kwargs)
