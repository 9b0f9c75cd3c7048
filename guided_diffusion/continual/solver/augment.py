"""The continual classifier's data augmentation (GUIDE's and Masip's solvers train on augmented batches)."""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, kinds: List[str], gen: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4), horizontal flip, rotation (±30°), brightness/contrast jitter, erasing."""
    n = x.shape[0]
    if "crop" in kinds:
        pad = F.pad(x, (4, 4, 4, 4), value=-1.0)
        dx, dy = torch.randint(0, 9, (2, n), generator=gen)
        x = torch.stack([pad[i, :, dy[i] : dy[i] + x.shape[2], dx[i] : dx[i] + x.shape[3]] for i in range(n)])
    if "flip" in kinds:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if "rotation" in kinds:
        ang = (torch.rand(n, generator=gen) * 2 - 1) * math.pi / 6
        cos, sin = ang.cos(), ang.sin()
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1
    if "jitter" in kinds:
        b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
        c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(-1, 1)
    if "erasing" in kinds:
        h, w = x.shape[2:]
        x = x.clone()
        for i in range(n):
            if torch.rand(1, generator=gen).item() < 0.5:
                eh, ew = [max(1, int(s * (0.2 + 0.3 * torch.rand(1, generator=gen).item()))) for s in (h, w)]
                y0 = torch.randint(0, h - eh + 1, (1,), generator=gen).item()
                x0 = torch.randint(0, w - ew + 1, (1,), generator=gen).item()
                x[i, :, y0 : y0 + eh, x0 : x0 + ew] = 0.0
    return x
