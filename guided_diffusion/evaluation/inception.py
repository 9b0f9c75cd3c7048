"""The Inception-v3 of the TF FID graph (``inception-2015-12-05``) in PyTorch, from a local file.

Nothing is downloaded. The weights are the PyTorch conversion that torch-fidelity releases as
``weights-inception-2015-12-05-6726825d.pth`` (pytorch-fid's FID weights
``pt_inception-2015-12-05-6726825d.pth`` have the same layer names and load too). Give the path
with ``weights_path``, the environment variable ``GD_INCEPTION_WEIGHTS``, or put the file in
``model/``. Neither torch-fidelity nor torchmetrics' FID can be used here: both need torchvision,
which has no CPU build for this torch.

The network follows the TF graph as those ports do: uint8 input resized to 299x299 with TF1's
bilinear resize (``align_corners=False``, no half-pixel centres), scaled by (x - 128) / 128;
batch-norm eps 1e-3; average pools that do not count padding; max pooling in the last block's
pool branch; 1008 classes. Outputs: ``pool`` = ``pool_3`` (2048), ``logits`` = the unbiased logits
(pool @ W^T, ADM's ``softmax/logits/MatMul``) for the Inception Score, ``spatial`` = the first 7
channels of ``mixed_6/conv`` (the 1x1 branch of Mixed_6d, 17x17, flattened in TF's HWC order:
2023 values), ADM's sFID features. The mapping of ``mixed_6/conv`` to Mixed_6d.branch1x1 is read
from the graph's naming (mixed, mixed_1, ... = Mixed_5b, 5c, ...) and has not been checked against
TensorFlow outputs here: quote sFID from this port as such.
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureExtractor, register_extractor

WEIGHTS_ENV = "GD_INCEPTION_WEIGHTS"
WEIGHTS_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False) of NCHW floats.

    Output pixel i samples the input at i * in / out (no half-pixel offset), interpolating linearly
    between floor and the next pixel (clamped at the border)."""

    def axis(t: torch.Tensor, dim: int) -> torch.Tensor:
        n_in = t.shape[dim]
        src = torch.arange(size, dtype=torch.float64, device=t.device) * (n_in / size)
        i0 = src.floor().long().clamp_(max=n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        w = (src - i0.double()).to(t.dtype)
        shape = [1] * t.dim()
        shape[dim] = size
        a, b = t.index_select(dim, i0), t.index_select(dim, i1)
        return a + (b - a) * w.view(shape)

    return axis(axis(x, 2), 3)


class Conv(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; attribute names as in the weights file."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # TF's average pool ignores the padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # 35x35 (Mixed_5b/c/d)
    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_ch, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class BlockB(nn.Module):  # 35 -> 17 reduction (Mixed_6a)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockC(nn.Module):  # 17x17 with factorised 7x7 (Mixed_6b..e)
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x, taps: Optional[List[torch.Tensor]] = None):
        b1 = self.branch1x1(x)
        if taps is not None:
            taps.append(b1)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([b1, b7, d, self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):  # 17 -> 8 reduction (Mixed_7a)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        d = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            d = conv(d)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # 8x8 with split 3x3 (Mixed_7b: average pool; Mixed_7c: max pool, as TF)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(s), self.branch3x3_2b(s),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


class TFInceptionV3(nn.Module):
    """The network; ``forward(x)`` takes NCHW floats in [0, 255] of any size."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor):
        x = resize_bilinear_tf1(x, INPUT_SIZE)
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        taps: List[torch.Tensor] = []
        x = self.Mixed_6c(self.Mixed_6b(x))
        x = self.Mixed_6e(self.Mixed_6d(x, taps))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))
        spatial = taps[0][:, :7].permute(0, 2, 3, 1).flatten(1)  # TF's NHWC order
        return pool, pool @ self.fc.weight.T, spatial


def find_weights(weights_path: Optional[str] = None) -> str:
    """The weights file: ``weights_path``, else $GD_INCEPTION_WEIGHTS, else model/<released name>."""
    candidates = [weights_path] if weights_path else []
    if not candidates and os.environ.get(WEIGHTS_ENV):
        candidates = [os.environ[WEIGHTS_ENV]]
    if not candidates:
        candidates = [os.path.join("model", name) for name in WEIGHTS_FILES]
    for path in candidates:
        if os.path.isfile(os.path.expanduser(path)):
            return os.path.expanduser(path)
    raise FileNotFoundError(
        f"the TF-FID Inception-v3 weights are not at {', '.join(candidates)}. Nothing is downloaded: "
        f"put the file {WEIGHTS_FILES[0]} (torch-fidelity's release v0.2.0, a PyTorch conversion of "
        f"TF's inception-2015-12-05 graph; pytorch-fid's {WEIGHTS_FILES[1]} also works) in model/, "
        f"or give its path with --inception_path / evaluation.inception_path / ${WEIGHTS_ENV}. "
        f"For small grayscale data use the domain features instead (--features domain)."
    )


def load_tf_inception(weights_path: Optional[str] = None) -> "TFInceptionV3":
    """Build the network and load the weights strictly (``torch.load(weights_only=True)``)."""
    from ..runtime.checkpoint import CheckpointError, load_torch

    path = find_weights(weights_path)
    with open(path, "rb") as f:
        data = f.read()
    sd = load_torch(path, data=data)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    net = TFInceptionV3()
    own = net.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not the TF-FID Inception-v3: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    net.load_state_dict(sd, strict=False)
    net.sha256 = hashlib.sha256(data).hexdigest()
    net.weights_path = path
    return net.eval().requires_grad_(False)


class InceptionFeatures(FeatureExtractor):
    """``pool`` 2048, ``logits`` 1008 (unbiased), ``spatial`` 2023 of the TF-FID Inception-v3."""

    has_spatial = True
    num_classes = 1008

    def __init__(self, net: TFInceptionV3):
        super().__init__()
        self.net = net
        sha = getattr(net, "sha256", "")
        self.name = f"inception-v3-tf2015(sha256 {sha[:8] or 'random-init'})"
        self.official = sha.startswith(WEIGHTS_SHA256_PREFIX)

    def describe(self) -> str:
        note = "" if self.official else " [NOT the released weights: numbers not comparable to published FIDs]"
        return f"{self.name}, pool_3 2048-d, TF1 bilinear resize to 299{note}"

    def to_input(self, images):
        x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:  # grayscale -> RGB by repeating, as Masip and the TF pipeline see it
            x = x.repeat(1, 3, 1, 1)
        return x

    def forward(self, x):
        pool, logits, spatial = self.net(x)
        return {"pool": pool, "logits": logits, "spatial": spatial}


@register_extractor("inception")
def build_inception(weights_path: Optional[str] = None, **_) -> InceptionFeatures:
    return InceptionFeatures(load_tf_inception(weights_path))
