"""The compute precision of a run: which dtype autocast uses and which memory layout the network runs in,
chosen once from what the device can do fast (``train.precision: auto``, ``train.memory_format: auto``).

What is measured (torch 2.13 CPU build, 2 threads; docs/performance.md):
- oneDNN runs bf16 convolutions and matmuls on native instructions only where the CPU has them:
  AVX512-BF16 (``vdpbf16ps``) or AMX-BF16 tiles. A CPU with neither emulates bf16 and ran the demo
  UNet's bf16 training at 0.10x of fp32; so ``auto`` is fp32 there.
- With AVX512-BF16 and no AMX (an AMD EPYC), bf16 autocast trains the demo UNet 1.5x faster than
  fp32 in the usual NCHW layout; channels_last gains nothing there (GroupNorm's channels_last
  kernel is slower) and CPU flash attention's bf16 backward is 2-3x slower than its fp32 one, so
  the attention core runs in fp32 (``attention_fp32``).
- With AMX-BF16 oneDNN uses the tiles for bf16 convolutions only in channels_last layout (a 3x3
  conv: 247 GFLOP/s against 43 in NCHW and 36 in fp32), so ``auto`` adds channels_last there.
- CUDA: bf16 where the GPU supports it; the layout stays NCHW unless asked (not measured here).

The master weights, the EMA and the optimizer state stay fp32 in every case: autocast casts only the
operands of convolutions and matmuls, and GroupNorm keeps fp32 statistics (``nn.GroupNorm32``).

How a CPU is asked: ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` (cpuinfo, the
same test oneDNN's dispatch makes), never a parse of ``/proc/cpuinfo`` text.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Dict

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_features() -> Dict[str, Any]:
    """What this CPU offers for low precision, as torch sees it (cached: the answer cannot change)."""

    def ask(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)  # private helpers of torch >= 2.3; absent: assume not
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": ask("_is_avx512_bf16_supported"),
        "amx": ask("_is_amx_tile_supported"),
    }


def describe_cpu() -> str:
    """The CPU's low-precision features in one token list for logs and metrics.csv: ``AVX512 avx512_bf16
    amx`` (torch's vector capability, then the bf16 features it has)."""
    f = cpu_features()
    return " ".join([f["capability"]] + [k for k in ("avx512_bf16", "amx") if f[k]])


@dataclass(frozen=True)
class Precision:
    """A resolved choice: ``name`` fp32 | bf16 | fp16, the layout, and why."""

    name: str = "fp32"
    channels_last: bool = False
    attention_fp32: bool = False  # run the attention core in fp32 under autocast (a CPU without AMX)
    reason: str = "asked for"

    @property
    def dtype(self):
        """The autocast dtype (None for fp32)."""
        return _DTYPES[self.name]

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: Any):
        """The context a forward runs in: autocast at this precision (nothing for fp32), and the
        attention core in fp32 where that is faster (``unet.attention_upcast``)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        from ..models.unet import attention_upcast

        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type=torch.device(device).type, dtype=self.dtype))
        if self.attention_fp32:
            stack.enter_context(attention_upcast())
        return stack

    def to_layout(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module``'s 4-d weights in this layout (in place; a no-op for NCHW)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d network input in this layout (conv outputs then keep it)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """A network output for the arithmetic after it: float32 (float64 stays) and NCHW."""
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()
        return out.contiguous() if self.channels_last else out

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        attn = ", attention core fp32" if self.attention_fp32 else ""
        return f"{self.name}{layout}{attn} ({self.reason})"


FP32 = Precision()


def resolve(precision: str = "auto", memory_format: str = "auto", device: Any = "cpu") -> Precision:
    """The precision a run uses on ``device``: ``precision`` and ``memory_format`` as configured, ``auto``
    decided by what the device runs fast (the module docstring). Raises ValueError on an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory_format {memory_format!r}: use {', '.join(MEMORY_FORMATS)}")
    kind = torch.device(device).type
    amx = kind == "cpu" and cpu_features()["amx"]
    if precision == "auto":
        if kind == "cuda":
            fast = torch.cuda.is_bf16_supported()
            why = "CUDA with bf16" if fast else "a CUDA device without bf16"
        elif kind == "cpu":
            f = cpu_features()
            fast = f["amx"] or f["avx512_bf16"]
            why = "CPU with AMX-BF16" if f["amx"] else "CPU with AVX512-BF16, no AMX" if fast else \
                "CPU without native bf16 (AVX512-BF16 or AMX): bf16 would be emulated"
        else:
            fast, why = False, f"{kind}: bf16 not measured"
        name, reason = ("bf16" if fast else "fp32"), f"auto: {why}"
    else:
        name, reason = precision, "train.precision"
    if memory_format == "auto":
        channels_last = name == "bf16" and amx  # oneDNN's AMX kernels want channels_last
    else:
        channels_last = memory_format == "channels_last"
    attention_fp32 = name != "fp32" and kind == "cpu" and not amx
    return Precision(name, channels_last, attention_fp32, reason)

