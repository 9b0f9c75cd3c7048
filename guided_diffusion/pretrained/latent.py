"""The autoencoder stage of latent diffusion: images <-> scaled latents (Rombach et al. 2022).

``latent.autoencoder`` names a diffusers ``AutoencoderKL`` folder (the ``[ldm]`` extra): Stable
Diffusion's VAE, or the small one ``scripts/autoencoder_train.py`` trains for the CPU preset.
``LatentCodec`` encodes images in [-1, 1] to the latent distribution's mean times the
autoencoder's ``scaling_factor`` (so the latents have about unit variance, as the diffusion
expects), and decodes back to [-1, 1]. The diffusion, the UNet and the continual methods then run
on latents unchanged (channels and size from the autoencoder); sample sets are decoded
(``SamplingSpec.decode``) for grids, evaluation and FID sets. A data set's latents are encoded once
and cached in ``model/latent_cache/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

import torch

from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError, register_section_schema


@dataclass
class LatentConfig:
    """Latent diffusion: the diffusion runs on an autoencoder's latents (Rombach et al. 2022)."""

    autoencoder: str = ""  # "" (pixels) | a diffusers AutoencoderKL folder (scripts/autoencoder_train.py, or SD's vae)
    # scripts/autoencoder_train.py: the autoencoder it trains and where it writes it (latent.autoencoder)
    block_out_channels: str = "32,64"  # widths per level (each level after the first halves the size)
    latent_channels: int = 4
    layers_per_block: int = 1
    kl_weight: float = 1.0e-6
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1.0e-3


def check_latent(lat: LatentConfig, cfg) -> None:
    """Latent diffusion: a diffusion model, on a schedule whose last steps keep unclipped samples finite."""
    if lat.autoencoder and cfg.generator != "diffusion":
        raise ConfigError("latent.autoencoder: latent diffusion (generator: diffusion)")
    if lat.autoencoder and cfg.diffusion.noise_schedule == "cosine" and not cfg.diffusion.predict_xstart:
        # Latents are sampled without clipping x0 to [-1, 1]; the cosine schedule's last steps have
        # alpha_t near 0, and 1/sqrt(alpha_t) multiplies the eps error there (630x at 50 respaced steps):
        # the samples diverge (measured: latent std ~800 instead of ~1).
        raise ConfigError("latent diffusion with diffusion.noise_schedule cosine: latents are sampled without clipping, "
                          "and the cosine schedule's last steps (alpha_t near 0) amplify the noise prediction's error "
                          "until the samples diverge; use scaled_linear (Rombach et al.'s LDMs) or linear")


register_section_schema("latent", None, LatentConfig, check_latent)


def load_autoencoder(path: str):
    """The diffusers AutoencoderKL in ``path`` (frozen, eval mode)."""
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"latent.autoencoder = {path!r}: no autoencoder there (a diffusers AutoencoderKL folder: "
                                f"train one with scripts/autoencoder_train.py, or give Stable Diffusion's vae folder)")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("latent diffusion needs diffusers: pip install -e '.[ldm]'") from None
    # low_cpu_mem_usage=False: what diffusers falls back to without accelerate (not a dependency), said
    # here so that it does not warn on every load
    ae = AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False).eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


class LatentCodec:
    """Images in [-1, 1] <-> latents (mean of q(z | x) times ``scaling_factor``)."""

    def __init__(self, path: str):
        self.path = path
        self.ae = load_autoencoder(path)
        self.scale = float(self.ae.config.scaling_factor)
        self.channels = int(self.ae.config.latent_channels)
        self.factor = 2 ** (len(self.ae.config.block_out_channels) - 1)  # the encoder's downsampling

    def latent_shape(self, channels: int, image_size: int) -> Tuple[int, int, int]:
        if image_size % self.factor:
            raise ValueError(f"data.image_size {image_size} is not divisible by the autoencoder's downsampling "
                             f"{self.factor}")
        return (self.channels, image_size // self.factor, image_size // self.factor)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        device = next(self.ae.parameters()).device
        out = [self.ae.encode(x[i:i + batch_size].to(device)).latent_dist.mean.cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents (on the latents' device)."""
        self.ae.to(z.device)
        return self.ae.decode(z / self.scale).sample.clamp(-1, 1)

    def encode_cached(self, x: torch.Tensor, what: str, root: str = "model") -> torch.Tensor:
        """``encode(x)``, cached under ``root/latent_cache`` by the autoencoder's weights and ``what``
        (a description of the data: data set, split, size)."""
        key = [os.path.abspath(self.path), ckpt.folder_stamp(self.path), what, list(x.shape)]
        return ckpt.cached_torch(os.path.join(root, "latent_cache"), key,
                                 lambda: {"latents": self.encode(x), "what": what})["latents"]


def build_autoencoder(block_out_channels, latent_channels: int, layers_per_block: int, channels: int,
                      image_size: int, seed: int = 0):
    """A fresh diffusers AutoencoderKL for ``channels``-channel images (the ``latent`` section's sizes)."""
    from diffusers import AutoencoderKL

    widths = tuple(int(w) for w in block_out_channels)
    groups = min(32, *widths)
    if any(w % groups for w in widths):
        raise ValueError(f"latent.block_out_channels {widths}: every width must be a multiple of {groups}")
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * len(widths),
                         up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths,
                         latent_channels=latent_channels, layers_per_block=layers_per_block, norm_num_groups=groups,
                         sample_size=image_size)


def train_autoencoder(ae, x: torch.Tensor, steps: int, batch_size: int, lr: float, kl_weight: float, seed: int = 0,
                      log=print, progress=None) -> list:
    """Train ``ae`` on images ``x`` in [-1, 1]: MSE reconstruction + ``kl_weight`` x KL(q(z|x) || N(0, I))
    (a sample of q each step), Adam. Returns the loss every 100 steps. Sets the ``scaling_factor`` to
    1 / the standard deviation of the training set's latent means (Rombach et al.'s rescaling)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    ae.train()
    curve, running = [], []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb = x[idx]
        dist = ae.encode(xb).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = ae.decode(z).sample
        mse = torch.mean((rec - xb) ** 2)
        kl = dist.kl().mean() / xb[0].numel()
        loss = mse + kl_weight * kl * xb[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(mse.item())
        if progress is not None:
            progress.update(1)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "mse": float(sum(running) / len(running))})
            running = []
            log(f"autoencoder step {step + 1}/{steps}: reconstruction MSE {curve[-1]['mse']:.5f}")
    ae.eval()
    with torch.no_grad():
        means = torch.cat([ae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    ae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return curve
