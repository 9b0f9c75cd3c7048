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
    """``forward(x, t, y)`` = ``net(x, t, text=(states[y], pooled[y]))``."""

    def __init__(self, net: nn.Module, states: torch.Tensor, pooled: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("states", torch.empty(0), persistent=False)
        self.register_buffer("pooled", torch.empty(0), persistent=False)
        self.set_prompts(states, pooled)

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
        return self.net(x, timesteps, text=(self.states[y], self.pooled[y]), **kwargs)
