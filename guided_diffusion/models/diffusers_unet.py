"""A pretrained diffusers UNet as this project's network (``model.arch: diffusers``): Stable
Diffusion's ``UNet2DConditionModel`` (text cross-attention) or a ``UNet2DModel`` (unconditional, or
class labels through its class embedding), read from a local folder in the diffusers layout
(``config.json`` and the weights; an SD root's ``unet/`` subfolder is found) and fine-tuned.

``DiffusersUNet`` gives it the UNet's interface, ``forward(x, timesteps, y=None, text=None)``:
``text`` = (token states, pooled) feeds the cross-attention (``encoder_hidden_states``; the text
encoder's width must be the UNet's ``cross_attention_dim``, e.g. SD's CLIP text model beside it),
``y`` the class embedding. It predicts eps (``diffusion.learn_sigma`` false). The diffusion, the
continual methods and ``prompts.PromptConditioned`` use it unchanged; on latents with
``latent.autoencoder`` = the SD folder's ``vae``.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn


def unet_folder(path: str) -> str:
    """``path``, or its ``unet/`` subfolder (a Stable Diffusion root)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.exists(os.path.join(path, "unet", "config.json")):
        return os.path.join(path, "unet")
    raise FileNotFoundError(f"model.diffusers_path = {path!r}: no diffusers UNet there (a folder with config.json, "
                            f"or a Stable Diffusion folder with unet/)")


def load_diffusers_unet(path: str) -> nn.Module:
    """The UNet2DConditionModel or UNet2DModel in ``path`` (its class from its config)."""
    import json

    try:
        import diffusers
    except ImportError:
        raise ImportError("model.arch diffusers needs diffusers: pip install -e '.[ldm]'") from None
    folder = unet_folder(path)
    with open(os.path.join(folder, "config.json")) as f:
        name = json.load(f).get("_class_name", "UNet2DConditionModel")
    if name not in ("UNet2DConditionModel", "UNet2DModel"):
        raise ValueError(f"{folder}: a {name}, not a UNet2DConditionModel or UNet2DModel")
    # low_cpu_mem_usage=False: what diffusers falls back to without accelerate (not a dependency), said
    # here so that it does not warn on every load
    return getattr(diffusers, name).from_pretrained(folder, local_files_only=True,
                                                low_cpu_mem_usage=False)


class DiffusersUNet(nn.Module):
    """``forward(x, t, y=None, text=None)`` over a diffusers UNet (its state_dict under ``unet.``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        config = unet.config
        self.cross_attention_dim = getattr(config, "cross_attention_dim", None)
        self.in_channels = int(config.in_channels)
        self.sample_size = config.sample_size

    def forward(self, x, timesteps, y=None, text=None):
        kwargs = {}
        if self.cross_attention_dim is not None:  # UNet2DConditionModel: cross-attention to the text
            if text is None:
                raise ValueError("a UNet2DConditionModel needs text (text.encoder): its cross-attention's tokens")
            kwargs["encoder_hidden_states"] = text[0].to(x.dtype)
        elif text is not None:
            raise ValueError("this diffusers UNet has no cross-attention: it takes no text")
        if y is not None:
            kwargs["class_labels"] = y
        return self.unet(x, timesteps, **kwargs).sample
