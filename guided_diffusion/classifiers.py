"""Image classifiers for the continual classifier ("solver"): pre-activation ResNet-18 and a small CNN.

Both take images in [-1, 1], (N, C, H, W), and return logits over ``num_classes``. They know
nothing of diffusion; the noisy classifier for ADM guidance is ``unet.EncoderUNetModel``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """He et al. (2016), "Identity mappings": BN-ReLU-conv twice, identity (or 1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for small images (3x3 stem, no max-pool), as GUIDE's ``resnet.py``."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers += [PreActBlock(cin, cout, 1 if i == 0 else 2), PreActBlock(cout, cout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        h = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(F.relu(self.bn(h)), 1).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


class SmallCNN(nn.Module):
    """Masip et al.'s solver CNN: conv32-conv32-pool-drop, conv64-conv128-pool-drop, 1x1 conv 128,
    global max-pool, linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(128, 128, 1), nn.ReLU(),
        )
        self.fc = nn.Linear(128, num_classes)

    def features(self, x):
        return torch.amax(self.body(x), dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


ARCHS = {"resnet18": PreActResNet18, "cnn": SmallCNN}


def create_classifier_net(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
