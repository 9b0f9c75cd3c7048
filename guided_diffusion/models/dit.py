"""A small Diffusion Transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Another architecture than the UNet for the same job: ``DiTModel(x, timesteps, y=None)`` maps an
[N, C, H, W] image, [N] (possibly fractional) timesteps and optional [N] labels to an
[N, C or 2C, H, W] output, like ``UNetModel``, so every diffusion, sampler and training objective
of this package takes either. DKDM uses it as a student of another architecture than its teacher.

The network, written here with torch primitives only:

    tokens  = patchify(x)                 a p x p, stride-p convolution: (H/p) * (W/p) tokens of width D
            + pos                         fixed 2-D sin-cos position embedding (a buffer, not learned)
    c       = MLP(sincos(t)) [+ E[y]]     conditioning vector; E has one extra "null" row when labels
                                          are dropped during training (class_dropout_prob > 0)
    N blocks with adaLN-Zero:             (shift, scale, gate) x 2 = Linear(SiLU(c)), zero-initialised
        h = h + gate1 * Attn(LN(h) * (1 + scale1) + shift1)
        h = h + gate2 * MLP(LN(h) * (1 + scale2) + shift2)     (GELU, tanh approximation)
    final   = Linear(LN(h) * (1 + scale) + shift)               adaLN, zero-initialised
    out     = unpatchify(final)           each token's p * p * C_out values back to a p x p patch

The zero initialisation of every adaLN modulation and of the final projection makes each block
start as the identity and the initial output exactly 0 (the paper's "adaLN-Zero").

Position embedding: the first D/2 channels encode the token's row, the last D/2 its column; each
half is [sin(pos * w_k), cos(pos * w_k)] for k < D/4 with w_k = 10000 ** (-k / (D/4)).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import timestep_embedding
from .unet import double_backward_attention, double_backward_wanted

TIME_FREQUENCIES = 256  # width of the sinusoidal timestep features fed to the timestep MLP


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[len(positions), dim]: [sin(pos * w_k) for k < dim/2, cos(pos * w_k) for k < dim/2]."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even width, got {dim}")
    k = torch.arange(dim // 2, dtype=torch.float64)
    w = 10000.0 ** (-k / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * w[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """[rows * cols, dim], row-major tokens: the row's 1-D embedding (dim/2), then the column's."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    r = torch.arange(rows).repeat_interleave(cols)  # token i sits at (i // cols, i % cols)
    c = torch.arange(cols).repeat(rows)
    return torch.cat([sincos_1d(dim // 2, r), sincos_1d(dim // 2, c)], dim=1).float()


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample affine modulation of token features: h [N, L, D], shift/scale [N, D]."""
    return h * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens, via scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, length, dim = h.shape
        q, k, v = self.qkv(h).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if double_backward_wanted():  # the fused kernels' backward cannot be differentiated again
            weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class DiTBlock(nn.Module):
    """A transformer block whose two residual branches are modulated and gated by the conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = h + gate1[:, None] * self.attn(_modulate(self.norm1(h), shift1, scale1))
        return h + gate2[:, None] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN, then a linear map of every token to its patch's p * p * C_out values."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(h), shift, scale))


class DiTModel(nn.Module):
    """A Diffusion Transformer with the UNet's interface: ``forward(x, timesteps, y=None)``.

    :param image_size: height and width of the (square) input; a multiple of ``patch_size``.
    :param in_channels: image channels C.
    :param patch_size: side p of the square patches (one token each).
    :param hidden_size: token width D (a multiple of 4 and of ``num_heads``).
    :param depth: number of transformer blocks.
    :param num_heads: attention heads per block.
    :param mlp_ratio: width of the blocks' MLP relative to D.
    :param num_classes: labels of a class-conditional model; None (or 0): unconditional.
    :param learn_sigma: output 2C channels (eps and the variance interpolation), else C.
    :param class_dropout_prob: in training mode, the probability that a label is replaced by the
        extra "null" label ``num_classes`` (for classifier-free guidance); 0: no null label.
    """

    def __init__(self, image_size: int, in_channels: int, patch_size: int, hidden_size: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, num_classes: Optional[int] = None, learn_sigma: bool = False,
                 class_dropout_prob: float = 0.0):
        super().__init__()
        for name, value in (("image_size", image_size), ("in_channels", in_channels), ("patch_size", patch_size),
                            ("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)):
            if int(value) < 1:
                raise ValueError(f"DiT {name} must be >= 1, got {value}")
        if image_size % patch_size:
            raise ValueError(f"DiT image_size {image_size} is not divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"DiT hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"DiT hidden_size {hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if not mlp_ratio > 0:
            raise ValueError(f"DiT mlp_ratio must be > 0, got {mlp_ratio}")
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"DiT class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes or None
        self.class_dropout_prob = class_dropout_prob
        self.grid = image_size // patch_size

        self.patchify = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid, self.grid)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQUENCIES, hidden_size), nn.SiLU(),
                                      nn.Linear(hidden_size, hidden_size))
        if self.num_classes is not None:
            null_row = 1 if class_dropout_prob > 0 else 0
            self.label_emb = nn.Embedding(self.num_classes + null_row, hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # The patch projection is a linear map of flattened patches: initialise it like one.
        w = self.patchify.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        for layer in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.num_classes is not None:
            nn.init.normal_(self.label_emb.weight, std=0.02)
        # adaLN-Zero: no modulation, closed gates, zero output at initialisation.
        for block in self.blocks:
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        for layer in (self.final.ada[1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L, p * p * C] (per token: row within the patch, column, channel) -> [N, C, H, W]."""
        n, g, p, c = tokens.shape[0], self.grid, self.patch_size, self.out_channels
        patches = tokens.reshape(n, g, g, p, p, c)  # (patch row, patch col, row in patch, col in patch, channel)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return y

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, C, H, W] inputs, [N] timesteps (may be fractional), [N] labels iff class-conditional."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("must specify y if and only if the model is class-conditional")
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"DiT built for {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}")
        with double_backward_attention(torch.is_grad_enabled() and x.requires_grad):
            h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)  # [N, L, D]
            c = self.time_mlp(timestep_embedding(timesteps, TIME_FREQUENCIES).to(h.dtype))
            if self.num_classes is not None:
                assert y.shape == (x.shape[0],), f"y must be [N] labels, got {tuple(y.shape)}"
                c = c + self.label_emb(self._labels(y))
            for block in self.blocks:
                h = block(h, c)
            return self.unpatchify(self.final(h, c)).to(x.dtype)
