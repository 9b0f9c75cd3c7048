"""The domain classifier: a small CNN trained on the data set itself, for "domain FID" and class
predictions on small grayscale data (MNIST-like), where ImageNet Inception features mean little.

Its penultimate layer (``feature_dim``, after ReLU) gives the features of the domain FID, precision
and recall; its logits give the class predictions of KLD / ARD / per-class accuracy. It is saved
once as ``.safetensors`` plus a ``.json`` beside it (architecture, data set, split, version, test
accuracy), by default ``model/eval_classifier_{dataset}.safetensors``
(``scripts/train_eval_classifier.py``). Domain FIDs are comparable only between runs that use the
same classifier file: the protocol string names it, with its test accuracy and the sha256 of its
weights (the first 12 hex digits). The classifiers of the presets ship in ``model/`` so that every
machine measures with the same weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureExtractor, register_extractor

FORMAT_VERSION = 1
KIND = "domain_classifier"


def default_classifier_path(dataset: str) -> str:
    return os.path.join("model", f"eval_classifier_{dataset}.safetensors")


class DomainClassifier(nn.Module):
    """conv-conv-pool x2, then a ``feature_dim`` hidden layer (the features) and the class logits."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 width: int = 32, feature_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        self.arch = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                         width=width, feature_dim=feature_dim, dropout=dropout)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.hidden = nn.Linear(2 * w * side * side, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) of images in [-1, 1], NCHW."""
        h = F.relu(self.hidden(self.body(x).flatten(1)))
        return h, self.head(self.drop(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


# ----------------------------------------------------------------------------------------------
# Training


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image, filled with the background (-1)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    d = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, d[i, 0] : d[i, 0] + h, d[i, 1] : d[i, 1] + w] for i in range(n)])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500, device=None) -> torch.Tensor:
    """Predicted classes of model tensors ``x`` (NCHW in [-1, 1])."""
    device = device or next(model.parameters()).device
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def train_domain_classifier(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, num_classes: int,
    *, epochs: int = 20, lr: float = 1e-3, batch_size: int = 64, seed: int = 0, max_shift: int = 2,
    width: int = 32, feature_dim: int = 64, device=None, log: Optional[Callable[[str], None]] = None,
) -> Tuple[DomainClassifier, Dict]:
    """Train on (x_train, y_train) (model tensors in [-1, 1]); returns (model, report).

    Adam with a cosine learning-rate decay, random shifts of up to ``max_shift`` pixels. The report
    holds the test accuracy (overall and per class) and the training curve."""
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    _, c, h, _ = x_train.shape
    model = DomainClassifier(c, h, num_classes, width=width, feature_dim=feature_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    history = []
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            xb = _shift(x_train[idx], max_shift, gen).to(device)
            yb = y_train[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        test_acc = float((predict(model, x_test, device=device) == y_test).double().mean())
        row = {"epoch": epoch + 1, "loss": loss_sum / len(x_train), "train_acc": correct / len(x_train),
               "test_acc": test_acc, "sec": round(time.time() - t0, 1)}
        history.append(row)
        if log:
            log(f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}, train acc {row['train_acc']:.4f}, "
                f"test acc {row['test_acc']:.4f} ({row['sec']} s)")
    pred = predict(model, x_test, device=device)
    per_class = {int(k): float((pred[y_test == k] == k).double().mean()) for k in torch.unique(y_test).tolist()}
    report = {"test_accuracy": float((pred == y_test).double().mean()), "per_class_test_accuracy": per_class,
              "history": history, "train_sec": round(time.time() - t0, 1),
              "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "max_shift": max_shift}}
    return model.eval(), report


# ----------------------------------------------------------------------------------------------
# Files


def save_domain_classifier(model: DomainClassifier, path: str, meta: Dict) -> None:
    """Weights as safetensors, ``meta`` (+ architecture, kind, version) as JSON beside them."""
    from ..runtime.checkpoint import save_safetensors

    if not path.endswith(".safetensors"):
        raise ValueError(f"the domain classifier is saved as .safetensors, got {path}")
    full = dict(meta, kind=KIND, version=FORMAT_VERSION, arch=dict(model.arch))
    save_safetensors(model.state_dict(), path, full)


def read_classifier_meta(path: str) -> Dict:
    meta_path = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no domain classifier at {path}: train it once with "
            f"`python scripts/train_eval_classifier.py --config <your yaml>` (a few minutes on CPU)"
        )
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} has no {meta_path} beside it (architecture and provenance)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("kind") != KIND:
        raise ValueError(f"{meta_path} does not describe a domain classifier (kind={meta.get('kind')!r})")
    return meta


def load_domain_classifier(path: str, device=None) -> Tuple[DomainClassifier, Dict]:
    """(model in eval mode, metadata) from ``path`` (.safetensors) and its ``.json``."""
    from ..runtime.checkpoint import load_weights

    meta = read_classifier_meta(path)
    model = DomainClassifier(**meta["arch"])
    load_weights(model, path, what="domain classifier")
    return model.to(device or "cpu").eval().requires_grad_(False), meta


# ----------------------------------------------------------------------------------------------
# As a feature extractor


class DomainFeatures(FeatureExtractor):
    """``pool`` = penultimate features, ``logits`` = class logits of a domain classifier."""

    def __init__(self, model: DomainClassifier, meta: Optional[Dict] = None, path: str = "", sha256: str = ""):
        super().__init__()
        self.model = model
        self.meta = meta or {}
        self.path = path
        self.num_classes = model.arch["num_classes"]
        self.predicts_dataset_classes = True
        acc = self.meta.get("test_accuracy")
        acc_s = f", test acc {acc:.4f}" if isinstance(acc, float) else ""
        sha_s = f", sha256 {sha256[:12]}" if sha256 else ""
        self.name = (f"domain-cnn({self.meta.get('dataset', '?')} {self.meta.get('split', '?')}, "
                     f"v{self.meta.get('version', '?')}{acc_s}{sha_s})")

    def describe(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"{self.name}, {self.model.arch['feature_dim']}-d penultimate{where}"

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        from ..data import to_tensor

        a = self.model.arch
        return to_tensor(np.asarray(images), a["image_size"], a["in_channels"])

    def forward(self, x):
        feats, logits = self.model.features(x)
        return {"pool": feats, "logits": logits}


@register_extractor("domain")
def build_domain(classifier_path: Optional[str] = None, dataset: Optional[str] = None, device=None,
                 **_) -> DomainFeatures:
    if not classifier_path:
        if not dataset:
            raise ValueError("the domain features need classifier_path (or the data set's name for the default path)")
        classifier_path = default_classifier_path(dataset)
    from ..runtime.checkpoint import file_sha256

    model, meta = load_domain_classifier(classifier_path, device)
    return DomainFeatures(model, meta, classifier_path, sha256=file_sha256(classifier_path))
