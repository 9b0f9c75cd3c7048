"""Image classifiers for the continual classifier ("solver"): pre-activation ResNet-18 and a small CNN.

Both take images in [-1, 1], (N, C, H, W), and return logits over ``num_classes``. They know
nothing of diffusion; ``TimeConditioned`` wraps either into a classifier that also takes a timestep
(GUIDE's noised classifier). ADM's noisy classifier is ``unet.EncoderUNetModel``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.nn import timestep_embedding


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


class MasipCNN(nn.Module):
    """Masip et al.'s solver CNN exactly (their ``src/models/simple_cnn.py`` ``SimpleCNN``): conv32 (pad 1) -
    conv32 (no pad) - pool - drop, conv64 (pad 1) - conv128 (no pad) - pool - drop, 1x1 conv 128, global
    max-pool, dropout 0.25, linear. (``SmallCNN``, this project's ``cnn``, pads every conv and has no last
    dropout.)"""

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=0), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=0), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(128, 128, 1), nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(128, num_classes)

    def features(self, x):
        return self.drop(torch.amax(self.body(x), dim=(2, 3)))

    def forward(self, x):
        return self.fc(self.features(x))


class SimpleMLP(nn.Module):
    """Masip et al.'s MLP solver (``--solver_type mlp``: Avalanche's ``SimpleMLP`` with its defaults): the
    flattened image through ``hidden_layers`` blocks of Linear(hidden_size) - ReLU - Dropout(drop_rate),
    then a linear layer to the classes."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28, hidden_size: int = 512,
                 hidden_layers: int = 1, drop_rate: float = 0.5):
        super().__init__()
        layers, width = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(drop_rate)]
            width = hidden_size
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.fc(self.features(x))


class TimeConditioned(nn.Module):
    """A classifier of noisy images x_t that also takes their timestep: ``forward(x, timesteps)``.

    The timesteps (those the diffusion network receives) go through ADM's sinusoidal embedding and
    an MLP to a per-feature scale and shift of the wrapped net's pooled features, before its last
    linear layer. GUIDE's noised ResNet concatenates the raw timestep to the pooled features
    instead (a logit bias linear in t); the embedding is our deliberate difference: t in 0..999 as
    a raw input dominates the logits at initialisation. The MLP's last layer starts at zero, so
    the untrained wrapper computes exactly the wrapped net. ``timesteps=None`` means t = 0, as in
    GUIDE.
    """

    def __init__(self, net: nn.Module, embed_dim: int = 64):
        super().__init__()
        self.net = net
        self.embed_dim = embed_dim
        features = net.fc.in_features
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, features), nn.SiLU(), nn.Linear(features, 2 * features))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)

    def forward(self, x, timesteps=None):
        h = self.net.features(x)
        if timesteps is None:
            timesteps = torch.zeros(x.shape[0], device=x.device)
        scale, shift = self.time_mlp(timestep_embedding(timesteps, self.embed_dim).to(h.dtype)).chunk(2, dim=-1)
        return self.net.fc(h * (1 + scale) + shift)


ARCHS = {"resnet18": PreActResNet18, "cnn": SmallCNN, "masip_cnn": MasipCNN, "mlp": SimpleMLP}


def create_classifier_net(arch: str, num_classes: int, in_channels: int, time_conditioned: bool = False,
                          image_size: int = 28) -> nn.Module:
    """The solver's classifier (``solver.arch``: mlp (Masip's), masip_cnn (Masip's CNN), cnn (its padded
    variant, this project's), resnet18 (GUIDE's)); ``time_conditioned``:
    wrapped to also take the timestep of x_t. ``image_size`` sizes the MLP's input (the conv nets pool)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; valid: {', '.join(ARCHS)}")
    extra = {"image_size": image_size} if arch == "mlp" else {}
    net = ARCHS[arch](num_classes=num_classes, in_channels=in_channels, **extra)
    return TimeConditioned(net) if time_conditioned else net
