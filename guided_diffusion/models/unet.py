"""
ADM's UNet (guided-diffusion) and its half-UNet classifier, with the same constructor
arguments and state_dict keys and shapes, so ADM checkpoints load with strict=True.

Differences from ADM, all invisible in the state_dict:
- Attention runs through `F.scaled_dot_product_attention` on projections computed by
  `F.linear` on the squeezed 1x1 conv weights (`attention_backend="sdpa"`, the default);
  `attention_backend="einsum"` is ADM's own computation, kept as the reference.
- Gradient checkpointing happens only when `use_checkpoint=True` (ADM always recomputes its
  attention blocks) and uses torch's non-reentrant checkpoint, which keeps autocast.
- `use_fp16` only records the wish; mixed precision is autocast's job (bf16 preferred).
  `convert_to_fp16()` still casts the torso as ADM's did.
- Class conditioning has a choice of `embedding_kind` (GUIDE's `concat_time_1hot`).
- Everything is twice differentiable: when the network input requires grad (an energy-based
  parameterisation, classifier gradients) attention uses an explicit softmax(QK^T)V instead of
  the fused CPU/GPU kernels, whose backward is not differentiable.

The network knows nothing of diffusion: it maps (x, t[, y]) to a tensor.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` counts the einsum backend, and the sdpa
backend inside `double_backward_attention()` (torch 2.13 has no formula for the fused CPU flash
kernel, whose attention matmuls it would miss); for thop-style module hooks the attention
modules carry ADM's `count_flops` static method.
"""

import contextlib
import math
import threading
from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)

EMBEDDING_KINDS = ("add_time_learned", "concat_time_1hot", "none")
ATTENTION_BACKENDS = ("sdpa", "einsum")

# ---------------------------------------------------------------------------------------------
# Twice-differentiable attention switch.
# The fused SDPA kernels (flash on CPU, flash/mem-efficient on GPU) have a backward that cannot
# itself be differentiated, which breaks autograd.grad(..., create_graph=True) + backward. The
# switch is read when an attention block runs forward and passed to it as an argument, so a
# checkpointed block recomputes with the same choice.
_state = threading.local()


def double_backward_wanted():
    return getattr(_state, "double_backward", False)


@contextlib.contextmanager
def double_backward_attention(enabled=True):
    """Context in which attention is computed with plain, twice-differentiable ops.

    Entered automatically by UNetModel/EncoderUNetModel.forward when grad mode is on and the
    input `x` requires grad. Enter it yourself only to differentiate twice with respect to
    parameters alone (the input not requiring grad).
    """
    prev = double_backward_wanted()
    _state.double_backward = prev or bool(enabled)
    try:
        yield
    finally:
        _state.double_backward = prev


def upcast_wanted():
    return getattr(_state, "upcast", False)


@contextlib.contextmanager
def attention_upcast(enabled=True):
    """Context in which the attention core (softmax(QK^T)V) of a bf16/fp16 forward runs in float32.

    ``runtime.precision`` enters it on a CPU without AMX, where torch's bf16 flash-attention kernel is
    slower than its fp32 one (backward 2-3x; docs/performance.md); projections stay in autocast's dtype.
    Read when an attention block runs forward and passed to it, as ``double_backward_attention``.
    """
    prev = upcast_wanted()
    _state.upcast = bool(enabled)
    try:
        yield
    finally:
        _state.upcast = prev


def _check_backend(attention_backend):
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}")


def _conv1x1_linear(conv, x_tokens):
    """Apply a 1x1 Conv1d to token-major input [N, T, C_in] as a linear map -> [N, T, C_out].

    The parameter keeps the conv's [C_out, C_in, 1] shape (ADM checkpoints); a linear is
    faster than conv1d on CPU for this shape. A module that adds to the conv's map (``lora.LoRAConv1d``:
    per-task adapters) offers ``forward_tokens`` for this layout, and it is called instead: reading
    ``conv.weight`` alone here would silently skip what the module's forward adds.
    """
    forward_tokens = getattr(conv, "forward_tokens", None)
    if forward_tokens is not None:
        return forward_tokens(x_tokens)
    return F.linear(x_tokens, conv.weight.squeeze(-1), conv.bias)


# ---------------------------------------------------------------------------------------------
# QKV attention (no parameters)


def count_flops_attn(model, inputs, output):
    """thop-style counter for the two attention matmuls: 2 * N * T^2 * C multiply-adds.

    `inputs[0]` is the qkv tensor [N, 3C, T]. Use as
    `thop.profile(net, inputs=..., custom_ops={QKVAttention: QKVAttention.count_flops, ...})`.
    """
    n, width, length = inputs[0].shape
    ops = 2 * n * (length**2) * (width // 3)
    model.total_ops += torch.DoubleTensor([ops])


def _upcast(x):
    """To float32 if x is of lower precision (ADM's `.float()`, without rounding float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _softmax_attention(q, k, v):
    """softmax(q k^T / sqrt(ch)) v on [..., T, ch] tensors with ops that differentiate twice.

    q and k are each scaled by ch^-1/4 as ADM does (steadier in low precision), the softmax is
    taken in at least float32.
    """
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    w = torch.matmul(q * scale, (k * scale).transpose(-1, -2))
    w = torch.softmax(_upcast(w), dim=-1).to(w.dtype)
    return torch.matmul(w, v)


class _QKVAttentionBase(nn.Module):
    """Multi-head attention over a packed qkv tensor [N, 3*H*ch, T] -> [N, H*ch, T].

    Subclasses differ only in how the 3*H*ch channels are laid out. `backend="einsum"` is ADM's
    computation; `backend="sdpa"` views the same channels as [N, H, T, ch] and calls
    `F.scaled_dot_product_attention` (or `_softmax_attention` when `double_backward`), and
    returns a [N, H*ch, T] view of a token-major tensor, ready for a following linear.
    """

    legacy = False

    def __init__(self, n_heads, backend="einsum"):
        super().__init__()
        _check_backend(backend)
        self.n_heads = n_heads
        self.backend = backend

    def forward(self, qkv, double_backward=False, encoder_kv=None, upcast=False):
        """``encoder_kv`` [N, 2*H*ch, S]: keys and values of S encoder tokens (a text's), laid out as the
        qkv's k and v (legacy: heads first), prepended to the image's keys and values (GLIDE).
        ``upcast``: compute softmax(QK^T)V in float32 and return it in qkv's dtype (``attention_upcast``)."""
        n, width, length = qkv.shape
        assert width % (3 * self.n_heads) == 0, f"qkv width {width} not divisible by 3 * {self.n_heads} heads"
        ch = width // (3 * self.n_heads)
        if self.backend == "einsum":
            return self._einsum(qkv, n, ch, length, encoder_kv)
        # Splitting the channel dimension is a view whatever its stride, so a token-major qkv
        # (the transpose of a linear's output) yields [N, H, T, ch] views with unit last stride.
        if self.legacy:
            q, k, v = qkv.view(n, self.n_heads, 3, ch, length).transpose(-1, -2).unbind(2)
        else:
            q, k, v = qkv.view(n, 3, self.n_heads, ch, length).transpose(-1, -2).unbind(1)
        if encoder_kv is not None:
            ek, ev = self._split_encoder_kv(encoder_kv, n, ch)  # [N, H, ch, S] each
            k = torch.cat([ek.transpose(-1, -2), k], dim=2)
            v = torch.cat([ev.transpose(-1, -2), v], dim=2)
        dtype = q.dtype
        if upcast and dtype in (torch.bfloat16, torch.float16):
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast(q.device.type, enabled=False) if upcast else contextlib.nullcontext():
            a = _softmax_attention(q, k, v) if double_backward else F.scaled_dot_product_attention(q, k, v)
        a = a.to(dtype)
        # [N, H, T, ch] -> [N, T, H*ch] (heads outermost, as ADM) -> [N, H*ch, T] view.
        return a.transpose(1, 2).reshape(n, length, self.n_heads * ch).transpose(1, 2)

    def _split_encoder_kv(self, encoder_kv, n, ch):
        """(ek, ev), each [N, H, ch, S], from [N, 2*H*ch, S] in this attention's layout."""
        s = encoder_kv.shape[-1]
        assert encoder_kv.shape[1] == 2 * self.n_heads * ch, "encoder_kv must have 2 * heads * ch channels"
        if self.legacy:
            return encoder_kv.reshape(n, self.n_heads, 2, ch, s).unbind(2)
        return encoder_kv.reshape(n, 2, self.n_heads, ch, s).unbind(1)

    @abstractmethod
    def _einsum(self, qkv, n, ch, length, encoder_kv=None):
        """ADM's einsum attention."""

    count_flops = staticmethod(count_flops_attn)


class QKVAttentionLegacy(_QKVAttentionBase):
    """ADM's legacy order: heads are split first, then q, k, v (layout [H, 3, ch])."""

    legacy = True

    def _einsum(self, qkv, n, ch, length, encoder_kv=None):
        q, k, v = qkv.reshape(n * self.n_heads, ch * 3, length).split(ch, dim=1)
        if encoder_kv is not None:
            ek, ev = (e.reshape(n * self.n_heads, ch, -1) for e in self._split_encoder_kv(encoder_kv, n, ch))
            k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(_upcast(weight), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return a.reshape(n, -1, length)


class QKVAttention(_QKVAttentionBase):
    """ADM's new order: q, k, v are split first, then heads (layout [3, H, ch])."""

    def _einsum(self, qkv, n, ch, length, encoder_kv=None):
        q, k, v = (t.reshape(n * self.n_heads, ch, length) for t in qkv.chunk(3, dim=1))
        if encoder_kv is not None:
            ek, ev = (e.reshape(n * self.n_heads, ch, -1) for e in self._split_encoder_kv(encoder_kv, n, ch))
            k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(_upcast(weight), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return a.reshape(n, -1, length)


# ---------------------------------------------------------------------------------------------
# Blocks


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (ADM's classifier head): [N, C, H, W] -> [N, output_dim].

    The mean token is prepended, a learned positional embedding added, and the mean token's
    attention output projected by `c_proj`.
    """

    def __init__(self, spacial_dim, embed_dim, num_heads_channels, output_dim=None, *, attention_backend="sdpa"):
        super().__init__()
        _check_backend(attention_backend)
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention_backend = attention_backend
        self.attention = QKVAttention(self.num_heads, backend=attention_backend)

    def forward(self, x):
        double_backward = double_backward_wanted()
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # [N, C, 1 + HW]
        x = x + self.positional_embedding[None].to(x.dtype)
        if self.attention_backend == "einsum":
            return self.c_proj(self.attention(self.qkv_proj(x)))[:, :, 0]
        qkv = _conv1x1_linear(self.qkv_proj, x.transpose(1, 2)).transpose(1, 2)
        a = self.attention(qkv, double_backward, upcast=upcast_wanted())
        # c_proj acts token-wise and only token 0 is returned: project that token alone.
        return F.linear(a[:, :, 0], self.c_proj.weight.squeeze(-1), self.c_proj.bias)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to `x` given the [N, emb_channels] embedding `emb`."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that passes `emb` to the children that are TimestepBlocks, and the encoder's
    tokens (a text's, [N, D, S]) to the attention blocks that attend to them."""

    def forward(self, x, emb, encoder_out=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock) and encoder_out is not None:
                x = layer(x, encoder_out)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling (inner two dims when dims == 3), then an optional 3x3 conv."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 conv (`op`) or, without conv, average pooling."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            assert self.channels == self.out_channels
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlock(TimestepBlock):
    """ADM's residual block, conditioned on the embedding, optionally resampling.

    :param channels: input channels.
    :param emb_channels: embedding channels.
    :param dropout: dropout rate before the last conv.
    :param out_channels: output channels (default `channels`).
    :param use_conv: with a channel change, a 3x3 (not 1x1) skip conv.
    :param use_scale_shift_norm: FiLM conditioning `norm(h) * (1 + scale) + shift`.
    :param dims: 1, 2 or 3 spatial dims.
    :param use_checkpoint: recompute this block's activations in backward.
    :param up: / :param down: resample by 2 inside the block (no parameters added).
    """

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_conv=False,
        use_scale_shift_norm=False,
        dims=2,
        use_checkpoint=False,
        up=False,
        down=False,
        *,
        norm_groups=32,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb):
        """[N, C, ...] features and [N, emb_channels] embedding -> [N, out_channels, ...]."""
        return checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            # Resample after the norm/activation but before the conv, as ADM.
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a residual connection.

    Parameters as ADM: `norm`, `qkv` (Conv1d C -> 3C, [3C, C, 1]), `proj_out` (zero-initialised
    Conv1d C -> C). `num_head_channels != -1` overrides `num_heads` with C // num_head_channels.
    """

    def __init__(
        self,
        channels,
        num_heads=1,
        num_head_channels=-1,
        use_checkpoint=False,
        use_new_attention_order=False,
        *,
        attention_backend="sdpa",
        norm_groups=32,
        encoder_channels=None,
    ):
        super().__init__()
        _check_backend(attention_backend)
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            assert channels % num_head_channels == 0, (
                f"q,k,v channels {channels} is not divisible by num_head_channels {num_head_channels}"
            )
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.attention_backend = attention_backend
        self.norm = normalization(channels, norm_groups)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        attention_cls = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention_cls(self.num_heads, backend=attention_backend)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))
        if encoder_channels is not None:  # GLIDE: the encoder's tokens as extra keys and values
            self.encoder_kv = conv_nd(1, encoder_channels, channels * 2, 1)

    def forward(self, x, encoder_out=None):
        """[N, C, ...] -> [N, C, ...]; ``encoder_out`` [N, D, S]: tokens to attend to as well."""
        return checkpoint(self._forward, x, encoder_out, double_backward_wanted(), upcast_wanted(),
                          enabled=self.use_checkpoint)

    def _forward(self, x, encoder_out, double_backward, upcast):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.norm(x)
        ekv = self.encoder_kv(encoder_out.to(h.dtype)) if encoder_out is not None else None
        if self.attention_backend == "einsum":
            h = self.proj_out(self.attention(self.qkv(h), encoder_kv=ekv))
        else:
            qkv = _conv1x1_linear(self.qkv, h.transpose(1, 2)).transpose(1, 2)
            a = self.attention(qkv, double_backward, encoder_kv=ekv, upcast=upcast)
            h = _conv1x1_linear(self.proj_out, a.transpose(1, 2)).transpose(1, 2)
        return (x + h).reshape(b, c, *spatial)


# ---------------------------------------------------------------------------------------------
# Models


def _convert_module_to_f16(module):
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def _convert_module_to_f32(module):
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


def _build_encoder(
    net,
    in_channels,
    model_channels,
    num_res_blocks,
    attention_resolutions,
    dropout,
    channel_mult,
    conv_resample,
    dims,
    use_checkpoint,
    num_heads,
    num_head_channels,
    use_scale_shift_norm,
    resblock_updown,
    use_new_attention_order,
    attention_backend,
    norm_groups=32,
    encoder_channels=None,
):
    """Build `input_blocks` and `middle_block` on `net` (shared by both models, ADM's order);
    ``encoder_channels``: the attention blocks also attend to an encoder's tokens of that width.

    Returns (ch, input_block_chans, ds): the channels at the bottom, the channels of every
    input block's output (the skips), and the downsample factor at the bottom.
    """
    time_embed_dim = model_channels * 4

    def res(ch_in, ch_out=None, **kw):
        return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, dims=dims,
                        use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
                        norm_groups=norm_groups, **kw)

    def attn(ch):
        return AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads,
                              num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order,
                              attention_backend=attention_backend, norm_groups=norm_groups,
                              encoder_channels=encoder_channels)

    ch = int(channel_mult[0] * model_channels)
    net.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
    net._feature_size = ch
    input_block_chans = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res(ch, int(mult * model_channels))]
            ch = int(mult * model_channels)
            if ds in attention_resolutions:
                layers.append(attn(ch))
            net.input_blocks.append(TimestepEmbedSequential(*layers))
            net._feature_size += ch
            input_block_chans.append(ch)
        if level != len(channel_mult) - 1:
            if resblock_updown:
                down = res(ch, ch, down=True)
            else:
                down = Downsample(ch, conv_resample, dims=dims, out_channels=ch)
            net.input_blocks.append(TimestepEmbedSequential(down))
            input_block_chans.append(ch)
            ds *= 2
            net._feature_size += ch

    net.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
    net._feature_size += ch
    return ch, input_block_chans, ds


class UNetModel(nn.Module):
    """ADM's UNet with attention and timestep (and optionally class) embedding.

    Arguments are ADM's, in ADM's order (see guided-diffusion's unet.py):
    :param image_size: input resolution (recorded; the net is fully convolutional).
    :param in_channels: / :param out_channels: channels of input and output.
    :param model_channels: base width; the embedding has 4 * model_channels channels.
    :param num_res_blocks: ResBlocks per level.
    :param attention_resolutions: downsample factors (not resolutions) with attention.
    :param dropout: / :param channel_mult: / :param conv_resample: / :param dims: as ADM.
    :param num_classes: number of classes for class conditioning, or None.
    :param use_checkpoint: recompute ResBlock and attention activations in backward.
    :param use_fp16: accepted for compatibility; use autocast (`convert_to_fp16` casts as ADM).
    :param num_heads: / :param num_head_channels: / :param num_heads_upsample: attention heads;
        a fixed `num_head_channels` overrides the head counts.
    :param use_scale_shift_norm: FiLM-like conditioning in ResBlocks.
    :param resblock_updown: resample with ResBlocks instead of Downsample/Upsample.
    :param use_new_attention_order: split qkv before heads (QKVAttention) instead of after.
    Keyword-only extras:
    :param embedding_kind: how `y` enters the embedding. `"add_time_learned"` (ADM; `label_emb`
        nn.Embedding added to the time embedding), `"concat_time_1hot"` (GUIDE; the time MLP
        outputs 4mc - num_classes and one_hot(y) is appended), or `"none"`. None picks
        `"add_time_learned"` when num_classes is set and `"none"` otherwise.
    :param attention_backend: `"sdpa"` (default) or `"einsum"` (ADM's computation).
    :param norm_groups: GroupNorm groups (ADM: 32). With 32 channels, 32 groups is an instance norm
        that removes every channel's spatial mean: a small net then cannot tell an image's overall
        brightness, and its samples get grey, noisy backgrounds (docs/recipe.md). Not part of the
        state_dict: ADM checkpoints load with any value (and behave as ADM's only with 32).
    """

    def __init__(
        self,
        image_size,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0,
        channel_mult=(1, 2, 4, 8),
        conv_resample=True,
        dims=2,
        num_classes=None,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
        *,
        embedding_kind=None,
        attention_backend="sdpa",
        norm_groups=32,
        text_dim=None,
    ):
        super().__init__()
        if embedding_kind is None:
            embedding_kind = "add_time_learned" if num_classes is not None else "none"
        if embedding_kind not in EMBEDDING_KINDS:
            raise ValueError(f"embedding_kind must be one of {EMBEDDING_KINDS}, got {embedding_kind!r}")
        if (num_classes is None) != (embedding_kind == "none"):
            raise ValueError(
                f"embedding_kind {embedding_kind!r} needs num_classes {'unset' if embedding_kind == 'none' else 'set'}"
                f" (got num_classes={num_classes})"
            )
        _check_backend(attention_backend)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.use_fp16 = use_fp16
        self.dtype = torch.float32  # the torso's dtype; float16 only after convert_to_fp16()
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.embedding_kind = embedding_kind
        self.attention_backend = attention_backend
        self.norm_groups = norm_groups

        time_embed_dim = model_channels * 4
        time_out = time_embed_dim
        if embedding_kind == "concat_time_1hot":
            # GUIDE: the one-hot label fills the last num_classes channels of the embedding.
            time_out = time_embed_dim - num_classes
            if time_out <= 0:
                raise ValueError(
                    f"concat_time_1hot needs 4 * model_channels > num_classes ({time_embed_dim} <= {num_classes})"
                )
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_out),
        )
        if embedding_kind == "add_time_learned":
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        self.text_dim = text_dim
        if text_dim is not None:  # GLIDE's text conditioning: the pooled state joins the embedding
            self.text_proj = linear(text_dim, time_embed_dim)
            # At a label embedding's scale: a unit-norm pooled state (as PromptConditioned and the text
            # encoders give) maps to N(0, 1) per channel, as nn.Embedding's rows start. Torch's default
            # (U(+-1/sqrt(D))) starts it ~30x weaker, so Adam's lr-sized steps rewrite it quickly; in a
            # continual run the classes of old tasks drift (experiments/results/text_check).
            nn.init.normal_(self.text_proj.weight, std=1.0)
            nn.init.zeros_(self.text_proj.bias)

        ch, input_block_chans, ds = _build_encoder(
            self, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm,
            resblock_updown, use_new_attention_order, attention_backend, norm_groups, encoder_channels=text_dim,
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                out_ch = int(model_channels * mult)
                layers = [
                    ResBlock(ch + ich, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                             use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
                             norm_groups=norm_groups)
                ]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(
                        AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads_upsample,
                                       num_head_channels=num_head_channels,
                                       use_new_attention_order=use_new_attention_order,
                                       attention_backend=attention_backend, norm_groups=norm_groups,
                                       encoder_channels=text_dim)
                    )
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, time_embed_dim, dropout, out_channels=ch, dims=dims, use_checkpoint=use_checkpoint,
                                 use_scale_shift_norm=use_scale_shift_norm, up=True, norm_groups=norm_groups)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch, norm_groups),
            nn.SiLU(),
            zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self):
        """Cast the torso's convolutions to float16, as ADM's fp16 trainer did."""
        for m in (self.input_blocks, self.middle_block, self.output_blocks):
            m.apply(_convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self):
        """Undo convert_to_fp16()."""
        for m in (self.input_blocks, self.middle_block, self.output_blocks):
            m.apply(_convert_module_to_f32)
        self.dtype = torch.float32

    def forward(self, x, timesteps, y=None, text=None):
        """Apply the model.

        :param x: [N, in_channels, ...] inputs.
        :param timesteps: [N] timesteps (may be fractional).
        :param y: [N] integer labels, given if and only if the model is class-conditional.
        :param text: (states [N, S, D], pooled [N, D]) of a text encoder, given if and only if the model
            is text-conditional (``text_dim``): the pooled state is added to the embedding and every
            attention block attends to the states too (GLIDE).
        :return: [N, out_channels, ...] outputs, in x's dtype.
        """
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("must specify y if and only if the model is class-conditional")
        if (text is not None) != (self.text_dim is not None):
            raise ValueError("must give text if and only if the model is text-conditional (text_dim)")
        with double_backward_attention(torch.is_grad_enabled() and x.requires_grad):
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            if self.num_classes is not None:
                assert y.shape == (x.shape[0],), f"y must be [N] labels, got {tuple(y.shape)}"
                if self.embedding_kind == "add_time_learned":
                    emb = emb + self.label_emb(y)
                else:
                    emb = torch.cat([emb, F.one_hot(y, self.num_classes).to(emb.dtype)], dim=1)
            encoder_out = None
            if text is not None:
                states, pooled = text
                emb = emb + self.text_proj(pooled.to(emb.dtype))
                encoder_out = states.transpose(1, 2)  # [N, D, S]

            hs = []
            h = x.type(self.dtype)
            for module in self.input_blocks:
                h = module(h, emb, encoder_out)
                hs.append(h)
            h = self.middle_block(h, emb, encoder_out)
            for module in self.output_blocks:
                h = module(torch.cat([h, hs.pop()], dim=1), emb, encoder_out)
            return self.out(h.type(x.dtype))


class EncoderUNetModel(nn.Module):
    """ADM's half UNet (the noisy classifier): input blocks, middle block, then a pooling head.

    Arguments as UNetModel (without num_classes; `out_channels` is the number of logits) plus
    :param pool: `"adaptive"` (GroupNorm, SiLU, global average pool, zero 1x1 conv),
        `"attention"` (AttentionPool2d; needs num_head_channels), `"spatial"` or `"spatial_v2"`
        (an MLP on the spatial means of every block's output).
    :param attention_backend: keyword-only, as UNetModel.
    """

    def __init__(
        self,
        image_size,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0,
        channel_mult=(1, 2, 4, 8),
        conv_resample=True,
        dims=2,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
        pool="adaptive",
        *,
        attention_backend="sdpa",
    ):
        super().__init__()
        _check_backend(attention_backend)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.use_fp16 = use_fp16
        self.dtype = torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.attention_backend = attention_backend

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )
        ch, _, ds = _build_encoder(
            self, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm,
            resblock_updown, use_new_attention_order, attention_backend,
        )

        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels")
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels,
                                attention_backend=attention_backend),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                nn.ReLU(),
                nn.Linear(2048, self.out_channels),
            )
        elif pool == "spatial_v2":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                normalization(2048),
                nn.SiLU(),
                nn.Linear(2048, self.out_channels),
            )
        else:
            raise NotImplementedError(f"Unexpected {pool} pooling")

    def convert_to_fp16(self):
        """Cast the torso's convolutions to float16, as ADM's fp16 trainer did."""
        for m in (self.input_blocks, self.middle_block):
            m.apply(_convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self):
        """Undo convert_to_fp16()."""
        for m in (self.input_blocks, self.middle_block):
            m.apply(_convert_module_to_f32)
        self.dtype = torch.float32

    def forward(self, x, timesteps):
        """[N, in_channels, H, W] inputs and [N] timesteps -> [N, out_channels] logits."""
        with double_backward_attention(torch.is_grad_enabled() and x.requires_grad):
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            spatial = self.pool.startswith("spatial")
            results = []
            h = x.type(self.dtype)
            for module in self.input_blocks:
                h = module(h, emb)
                if spatial:
                    results.append(h.type(x.dtype).mean(dim=(2, 3)))
            h = self.middle_block(h, emb)
            if spatial:
                results.append(h.type(x.dtype).mean(dim=(2, 3)))
                return self.out(torch.cat(results, dim=-1))
            return self.out(h.type(x.dtype))
