"""The ``evaluation:`` section of a config, and the domain classifier built from a config.

YAML (every key optional; ``evaluation.enabled: true`` turns the per-task evaluation of the
continual loop on)::

    evaluation:
      enabled: true
      num_samples: 1000        # generated samples per task (class-conditional: in proportion to the
                               # seen classes' test histogram)
      batch_size: 100          # sampling batch (global; each rank draws whole batches)
      sampler: ""              # "" -> continual.eval_sampler (e.g. ddim25; "50": 50 ancestral steps)
      features: domain         # domain | inception (FID / precision / recall features)
      classifier_path: ""      # "" -> model/eval_classifier_{data.dataset}.safetensors
      metrics: fid,kld,ard,class_acc,precision,recall

See ``EvaluationConfig`` for the rest (sampler, reference split, the classifier's training).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..runtime.config import ConfigError, register_section_schema
from ..sampling.config import check_sampler, is_ddim
from .metrics import METRICS


@dataclass
class EvaluationConfig:
    enabled: bool = False  # evaluate after every task of the continual loop
    num_samples: int = 1000  # generated samples per evaluation
    batch_size: int = 100  # sampling batch (global)
    sampler: str = ""  # sampler of the evaluation samples: ddimN | N (ancestral) | unipcN ... ("" -> continual.eval_sampler)
    eta: float = 0.0  # DDIM's eta (a sampler that is not DDIM takes none)
    seed: int = -1  # -1: the run's seed (the same noise after every task)
    features: str = "domain"  # domain | inception: the features of FID / precision / recall
    metrics: str = "fid,kld,ard,class_acc,precision,recall"  # any of fid,sfid,is,precision,recall,kld,ard,class_acc
    reference_split: str = "test"  # the real images of the seen classes: test | train
    feature_batch_size: int = 250
    classifier_path: str = ""  # "" -> model/eval_classifier_{data.dataset}.safetensors
    inception_path: str = ""  # "" -> $GD_INCEPTION_WEIGHTS, else model/weights-inception-2015-12-05-6726825d.pth
    train_classifier: bool = True  # train the domain classifier first when its file is missing
    classifier_epochs: int = 20
    classifier_lr: float = 1.0e-3
    classifier_batch_size: int = 64
    classifier_width: int = 32
    classifier_feature_dim: int = 64
    classifier_max_shift: int = 2  # random-shift augmentation (pixels)
    classifier_seed: int = 0

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(f"evaluation.{msg}")

        if self.features not in ("domain", "inception"):
            bad(f"features = {self.features!r} is not one of domain, inception")
        if self.reference_split not in ("test", "train"):
            bad(f"reference_split = {self.reference_split!r} is not one of test, train")
        unknown = [m for m in self.metric_list if m not in METRICS]
        if unknown:
            bad(f"metrics: unknown {unknown}; valid: {', '.join(METRICS)}")
        for key in ("num_samples", "batch_size", "feature_batch_size", "classifier_epochs",
                    "classifier_batch_size", "classifier_width", "classifier_feature_dim"):
            if getattr(self, key) <= 0:
                bad(f"{key} must be > 0, got {getattr(self, key)}")
        if self.num_samples < 4 and {"precision", "recall"} & set(self.metric_list):
            bad("num_samples must be >= 4 for precision / recall (k = 3 neighbours)")

    @property
    def metric_list(self):
        return [m.strip() for m in str(self.metrics).split(",") if m.strip()]


def evaluation_sampler(ev: EvaluationConfig, cfg) -> str:
    """The evaluation's sampler: its own, or ("") the continual grids' (``continual.eval_sampler``)."""
    return ev.sampler or cfg.continual.eval_sampler


def check_evaluation(ev: EvaluationConfig, cfg) -> None:
    """The evaluation's sampler (its own or the grids') takes ``evaluation.eta`` only if it is DDIM."""
    if ev.sampler:
        check_sampler("evaluation.sampler", ev.sampler, eta=ev.eta, eta_key="evaluation.eta")
    elif ev.eta and not is_ddim(cfg.continual.eval_sampler):
        raise ConfigError(f"evaluation.eta = {ev.eta} is DDIM's, but the evaluation samples with continual.eval_sampler "
                          f"= {cfg.continual.eval_sampler!r} (evaluation.sampler \"\"), which is not DDIM: set "
                          "evaluation.eta 0, or give the evaluation a DDIM sampler (evaluation.sampler=ddim50)")


register_section_schema("evaluation", None, EvaluationConfig, check_evaluation,
                        key_checks={"sampler": lambda v: check_sampler("evaluation.sampler", v)})


def evaluation_of(cfg) -> EvaluationConfig:
    """The config's evaluation section (defaults when the section is empty or unregistered)."""
    ev = cfg.evaluation
    if isinstance(ev, EvaluationConfig):
        return ev
    return EvaluationConfig(**(ev or {}))


def classifier_path_of(cfg) -> str:
    from .domain_classifier import default_classifier_path

    return evaluation_of(cfg).classifier_path or default_classifier_path(cfg.data.dataset)


def train_classifier_from_config(cfg, path: Optional[str] = None, log: Callable[[str], None] = print,
                                 device=None) -> dict:
    """Train the domain classifier on the config's data set (train split), test it on the test
    split, save it at ``path`` (default ``classifier_path_of(cfg)``); returns its metadata."""
    import torch

    from .. import experiment
    from .domain_classifier import save_domain_classifier, train_domain_classifier

    ev = evaluation_of(cfg)
    path = path or classifier_path_of(cfg)
    x, y, info = experiment.load_split(cfg, "train")
    xt, yt, _ = experiment.load_split(cfg, "test")
    log(f"training the domain classifier on {cfg.data.dataset} train ({len(x)} images, {info.num_classes} classes, "
        f"{info.channels}x{info.image_size}x{info.image_size}); testing on {len(xt)} test images")
    torch_threads = cfg.train.num_threads
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    model, report = train_domain_classifier(
        x, y, xt, yt, info.num_classes, epochs=ev.classifier_epochs, lr=ev.classifier_lr,
        batch_size=ev.classifier_batch_size, seed=ev.classifier_seed, max_shift=ev.classifier_max_shift,
        width=ev.classifier_width, feature_dim=ev.classifier_feature_dim, device=device, log=log,
    )
    sha = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    meta = dict(
        dataset=cfg.data.dataset, data_dir=cfg.data.data_dir, split="train", test_split="test",
        n_train=len(x), n_test=len(xt), image_size=info.image_size, channels=info.channels,
        num_classes=info.num_classes, resize=cfg.data.resize, train_data_sha256=sha,
        created=time.strftime("%Y-%m-%d %H:%M:%S"), torch=torch.__version__, **report,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_domain_classifier(model, path, meta)
    log(f"saved {path} (+ .json): test accuracy {report['test_accuracy']:.4f} after {report['train_sec']} s")
    return meta
