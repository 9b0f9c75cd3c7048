"""Image conversions and files: [-1,1] tensors to uint8, PNG grids, ADM-format ``.npz`` sample sets."""

from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
import torch

from .runtime.checkpoint import atomic_write_bytes


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) float in [-1,1] -> (N,H,W,C) uint8, ADM's rounding ((x+1)*127.5, clamped)."""
    x = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,C) uint8 -> (N,C,H,W) float32 in [-1,1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return (x / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def make_grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N,H,W,C) uint8 images into one (rows*H', cols*W', C) image."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (N,H,W,C) images, got shape {images.shape}")
    n, h, w, c = images.shape
    ncol = nrow or max(1, int(math.ceil(math.sqrt(n))))
    nrows = max(1, int(math.ceil(n / ncol)))
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    return grid


def save_png(image: np.ndarray, path: str, scale: int = 1) -> None:
    from PIL import Image

    if image.shape[-1] == 1:
        image = image[..., 0]
    im = Image.fromarray(image)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(images: np.ndarray, path: str, nrow: Optional[int] = None, scale: Optional[int] = None) -> None:
    """Save (N,H,W,C) uint8 images as one PNG grid; small images are enlarged for viewing."""
    if scale is None:
        scale = max(1, 64 // images.shape[1]) if images.shape[1] < 64 else 1
    save_png(make_grid(images, nrow), path, scale=scale)


def save_npz(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    """ADM's sample format: ``arr_0`` uint8 NHWC (3 channels: ADM's evaluator wants RGB), ``arr_1`` labels."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"samples must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
