"""Feature extractors behind one interface, and sharded feature extraction.

A ``FeatureExtractor`` is a module that maps a batch of uint8 images (N, H, W, C) to a dict of
float tensors: ``pool`` (N, D) for FID / precision / recall, ``logits`` (N, K) for the Inception
Score and class predictions, and ``spatial`` (N, D_s) for sFID where the network provides it.
Each says what it is (``name``, ``describe()``) so that every number can carry its protocol.

Extractors (``build_feature_extractor(kind, ...)``):

- ``domain``: a small CNN classifier trained on the data set itself (``domain_classifier``), for
  small grayscale data where Inception features mean little. Features: its penultimate layer.
- ``inception``: the Inception-v3 of the TF FID graph, ported to PyTorch (``inception``), loaded
  from a local weights file only.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..runtime import dist_util


class FeatureExtractor(torch.nn.Module):
    """Base class: ``forward(images_uint8_nhwc) -> {"pool", "logits"[, "spatial"]}``."""

    name = "features"
    has_spatial = False
    num_classes = 0  # size of ``logits`` (0: none)
    predicts_dataset_classes = False  # logits are the evaluated data set's classes (KLD, ARD, accuracy)

    def describe(self) -> str:
        return self.name

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC numpy -> the tensor ``forward`` takes (default: uint8 NHWC tensor)."""
        return torch.from_numpy(np.ascontiguousarray(images))


EXTRACTORS: Dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(kind: str):
    def wrap(fn):
        EXTRACTORS[kind] = fn
        return fn

    return wrap


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: np.ndarray,
    batch_size: int = 250,
    device=None,
    progress: Optional[Callable] = None,
    shard: bool = True,
) -> Dict[str, np.ndarray]:
    """Features of uint8 NHWC ``images`` (float32 arrays, in image order, complete on every rank).

    Batch b goes to rank ``b % world_size`` when ``shard`` (all ranks must call it then); the
    result does not depend on the number of ranks.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    device = torch.device(device) if device is not None else next(extractor.parameters()).device
    extractor.eval()
    rank, world = (dist_util.get_rank(), dist_util.get_world_size()) if shard else (0, 1)
    n_batches = (images.shape[0] + batch_size - 1) // batch_size
    mine = list(range(rank, n_batches, world))
    bar = progress(total=len(mine), desc="features") if callable(progress) else None
    out = {}
    for b in mine:
        x = extractor.to_input(images[b * batch_size : (b + 1) * batch_size]).to(device)
        feats = extractor(x)
        out[b] = {k: v.detach().float().cpu().numpy() for k, v in feats.items()}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if shard and world > 1:
        merged = {}
        for part in dist_util.all_gather_object(out):
            merged.update(part)
        out = merged
    if not out:
        return {}
    keys = out[min(out)].keys()
    return {k: np.concatenate([out[b][k] for b in sorted(out)]) for k in keys}
