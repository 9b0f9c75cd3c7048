"""The VAE generator baseline of Masip et al. (``--generator_type vae``): an unconditional,
fully connected VAE (their ``MlpVAE``, Avalanche's, with ``configs/model/vae.json``: encoder and
decoder 400-400, latent 100) and its loss, as they train it.

- Encoder: the image mapped to [0, 1] (their data is ``ToTensor`` pixels), flattened, Linear-ReLU
  per ``encoder_dims``; two heads give the latent mean and log-variance.
- Reparametrisation, as theirs: z = mean + eps * 0.5 * exp(logvar) (not the textbook
  exp(0.5 * logvar); the KL term below is the textbook one, so their optimum has this scale).
- Decoder: Linear-ReLU per ``decoder_dims``, a linear layer to the pixels and a sigmoid: the
  Bernoulli mean of each pixel in [0, 1].
- Loss (their ``VAE_loss``): mean binary cross-entropy per pixel + the batch mean of
  0.5 * sum(-1 - logvar + exp(logvar) + mean^2) divided by the number of pixels.
- Samples: z ~ N(0, I) decoded, returned in the model space [-1, 1] as every generator here.

Their MlpVAE also carries a classification head on the encoder that their loss never reads; it
is left out. The network knows nothing of tasks; ``VAEObjective`` is the training loop's objective.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(sizes: Sequence[int]) -> list:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers


class MlpVAE(nn.Module):
    """Masip's VAE generator; ``forward(x, eps)`` -> (Bernoulli means in [0, 1], mean, logvar)."""

    # sample_sets.sample_batch draws a set from this model with ``sample_from_noise``, not with a diffusion
    direct_sampler = True

    def __init__(self, shape: Tuple[int, int, int], encoder_dims: Sequence[int] = (400, 400),
                 decoder_dims: Sequence[int] = (400, 400), latent_dim: int = 100):
        super().__init__()
        self.shape = tuple(shape)
        self.latent_dim = int(latent_dim)
        pixels = self.shape[0] * self.shape[1] * self.shape[2]
        if not 1 <= self.latent_dim <= pixels:
            raise ValueError(f"the VAE's latent_dim must be in 1..{pixels} (the pixels of an image), got {latent_dim}")
        encoder, decoder = [pixels, *encoder_dims], [self.latent_dim, *decoder_dims]
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(encoder))
        self.z_mean = nn.Linear(encoder[-1], self.latent_dim)
        self.z_log_var = nn.Linear(encoder[-1], self.latent_dim)
        self.decoder = nn.Sequential(*_mlp(decoder), nn.Linear(decoder[-1], pixels), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z | x) for images ``x`` in [-1, 1]."""
        h = self.encoder((x + 1) / 2)
        return self.z_mean(h), self.z_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The Bernoulli means in [0, 1], shaped as images."""
        return self.decoder(z).view(-1, *self.shape)

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        mean, logvar = self.encode(x)
        z = mean + eps * 0.5 * torch.exp(logvar)
        return self.decode(z), mean, logvar

    def sample_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] decoded from z = the first ``latent_dim`` entries of each sample's noise (a
        sample set draws image-shaped noise per sample from its seed: the VAE's samples are seeded alike)."""
        p = next(self.parameters())
        return self.decode(noise.flatten(1)[:, : self.latent_dim].to(p.device, p.dtype)) * 2 - 1


def vae_loss(x: torch.Tensor, probs: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Masip's VAE loss on images ``x`` in [-1, 1]: {"loss", "bce", "kl"} (scalars; kl per pixel)."""
    n = x.shape[0]
    target = ((x + 1) / 2).clamp(0, 1).reshape(n, -1)
    bce = F.binary_cross_entropy(probs.reshape(n, -1).float(), target.float(), reduction="none").mean(1).mean()
    kl = (0.5 * torch.sum(-1 - logvar + torch.exp(logvar) + mean ** 2, dim=1)).mean() / target.shape[1]
    return {"loss": bce + kl, "bce": bce, "kl": kl}


class VAEObjective:
    """The training loop's objective for the VAE: ``vae_loss`` on the batch, eps from the step's generator.
    ``teacher``: the frozen previous VAE, whose samples join each batch as Masip's generative replay
    does (as many as the real batch; the loss over all of it). Draws, in this order, the replay's z
    and the batch's eps from ``ctx.generator``."""

    diffusion = None
    class_cond = False
    terms = ("loss", "bce", "kl")  # the loss terms a step logs

    def __init__(self, teacher: "MlpVAE" = None):
        self.teacher = teacher

    def __call__(self, model, x, y, ctx):
        if self.teacher is not None:
            with torch.no_grad():
                x = torch.cat([x, vae_samples(self.teacher, x.shape[0], ctx.generator).to(x.device, x.dtype)])
        eps = torch.randn((x.shape[0], getattr(model, "module", model).latent_dim), generator=ctx.generator)
        probs, mean, logvar = model(x, eps.to(x.device, x.dtype))
        terms = vae_loss(x, probs, mean, logvar)
        return terms["loss"], {k: v.detach() for k, v in terms.items()}

    def with_replay(self, teacher: "MlpVAE") -> "VAEObjective":
        """This objective with the previous VAE's samples in every batch."""
        return VAEObjective(teacher)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def vae_samples(model: MlpVAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples of ``model`` in [-1, 1], z drawn from ``generator`` (CPU)."""
    return model.sample_from_noise(torch.randn((n, model.latent_dim), generator=generator))
