"""The per-task evaluation of the continual loop (``evaluation.enabled: true``).

A run first gets its evaluation classifier (``evaluation_classifier``: loaded, or trained where the
config allows and the file is missing), then builds ``ContinualEvaluator(cfg, classifier)``. After each
task the loop calls the evaluator with ``(ctx, task, ema_model)``, which

1. draws ``evaluation.num_samples`` samples from the EMA model with the evaluation sampler (for a
   class-conditional model, labels in proportion to the label histogram of the reference images;
   the same seed after every task), sharded over ranks as ``sample_sets.sample_set`` does;
2. compares them with the real images of every class seen so far (``reference_split``, default
   the test split): domain (or Inception) FID, precision / recall (k = 3), KLD and ARD of the
   domain classifier's predicted classes, and its per-class accuracy on the samples;
3. returns the ``eval_*`` columns of the task's row of ``metrics.csv``: ``eval_fid``, ``eval_kld``,
   ``eval_ard``, ``eval_class_acc``, ``eval_precision``, ``eval_recall``, ``eval_acc_class_{c}``,
   ``eval_acc_task_{j}`` (mean over task j's classes: the generator's accuracy matrix row),
   ``eval_samples``, ``eval_ref_images``, ``eval_sec``, ``eval_features`` (the feature extractor: a
   domain classifier's name, test accuracy and weights' sha256) and ``eval_protocol`` (the protocol);
   and ``eval_fid_real``: the same FID for as many *real training* images of the seen classes
   (same class proportions) -- the floor that small sets put under the generated FID.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ..runtime import dist_util
from ..runtime import faults
from .class_metrics import class_histogram
from .extractors import build_feature_extractor
from .features import extract_features
from .reference import ImageSet
from .settings import classifier_path_of, evaluation_of, evaluation_sampler, train_classifier_from_config
from .suite import evaluate_sets

CLASS_METRICS = {"kld", "ard", "class_acc"}


@dataclass
class DrawnSamples:
    """The samples an evaluation measured, handed back with its columns (the loop's grid reuses them
    when they were drawn with the grid's sampler): uint8 NHWC images, their labels, the sampler and eta."""

    images: np.ndarray
    labels: np.ndarray
    sampler: str
    eta: float


def proportional_labels(classes: List[int], hist: np.ndarray, n: int) -> List[int]:
    """``n`` labels over ``classes`` in proportion to ``hist`` (largest remainders), grouped by class."""
    w = np.array([hist[c] for c in classes], np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(classes), 1.0 / len(classes))
    exact = w * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return [c for c, k in zip(classes, counts) for _ in range(int(k))]


def needs_classifier(cfg) -> bool:
    """Whether the config's evaluation reads the domain classifier (its features, or its class metrics)."""
    ev = evaluation_of(cfg)
    return ev.features == "domain" or bool(CLASS_METRICS & set(ev.metric_list))


def evaluation_classifier(cfg, log=print):
    """The domain classifier the config's evaluation reads (a ``FeatureExtractor``), or None where it reads
    none. A missing file is trained here, first, from the config's data when ``evaluation.train_classifier``
    is true (the log says so), else refused naming the script that trains it. The one place where
    evaluation may train anything: the caller asks for it before building evaluators."""
    if not needs_classifier(cfg):
        return None
    path = classifier_path_of(cfg)
    if not os.path.isfile(path):
        if not evaluation_of(cfg).train_classifier:
            raise FileNotFoundError(
                f"evaluation: no domain classifier at {path}; train it with "
                f"`python scripts/train_eval_classifier.py --config <yaml>` or set evaluation.train_classifier=true"
            )
        log(f"evaluation: no domain classifier at {path}: training it first (evaluation.train_classifier)")
        if dist_util.is_main():
            train_classifier_from_config(cfg, path, log=log)
        dist_util.barrier()
    classifier = build_feature_extractor("domain", classifier_path=path)
    if classifier.meta.get("dataset") != cfg.data.dataset:
        log(f"warning: the evaluation classifier {path} was trained on {classifier.meta.get('dataset')!r}, "
            f"the run uses {cfg.data.dataset!r}")
    return classifier


class ContinualEvaluator:
    """Callable ``(ctx, task, ema_model) -> {column: value}`` for the continual loop (one call per task).
    ``classifier``: ``evaluation_classifier(cfg)``, loaded once and shared by every evaluator of a run;
    building an evaluator reads and trains nothing."""

    def __init__(self, cfg, classifier, log=print):
        self.cfg = cfg
        self.ev = evaluation_of(cfg)
        self.log = log
        if needs_classifier(cfg) and classifier is None:
            raise ValueError("this evaluation reads the domain classifier: pass evaluation_classifier(cfg)")
        self.classifier = classifier
        if self.ev.features == "domain":
            self.features = self.classifier
        else:
            self.features = build_feature_extractor("inception", weights_path=self.ev.inception_path or None)
        self._test = None
        self._train = None
        self._ref_cache: Dict[tuple, tuple] = {}

    def _load(self, split: str):
        from ..data import load_dataset

        d = self.cfg.data
        opts = dict(test_dir=d.test_dir or None, allow_pickle=d.allow_pickle)
        if d.dataset == "image_folder":
            opts["image_size"] = d.image_size
        return load_dataset(d.dataset, data_dir=d.data_dir or None, split=split, **opts)

    def _real_like(self, labels: List[int]) -> np.ndarray:
        """Real training images with the class counts of ``labels`` (the first ones of each class)."""
        if self._train is None:
            self._train = self._load("train")
        y = self._train.labels
        picks = []
        for c in sorted(set(labels)):
            idx = np.flatnonzero(y == c)[: labels.count(c)]
            picks.append(idx)
        return self._train.images[np.concatenate(picks)] if picks else self._train.images[:0]

    def _reference(self, classes) -> tuple:
        """(ImageSet of the real images of ``classes``, features by extractor name), cached."""
        from ..data import subset_by_classes

        key = tuple(sorted(classes))
        if key not in self._ref_cache:
            if self._test is None:
                self._test = self._load(self.ev.reference_split)
            arrays = subset_by_classes(self._test, key)
            desc = (f"{len(arrays)} {self.cfg.data.dataset} {self.ev.reference_split} images of classes "
                    f"{' '.join(map(str, key))}")
            self._ref_cache = {key: (ImageSet(arrays.images, arrays.labels, arrays.num_classes, desc), {})}
        return self._ref_cache[key]

    def __call__(self, ctx, task, ema_model) -> Tuple[Dict, "DrawnSamples"]:
        """(the ``eval_*`` columns after ``task``, the samples they were measured on)."""
        tasks = {f"task_{t.index}": list(t.classes) for t in ctx.scenario.tasks[: task.index + 1]}
        out, drawn = self.evaluate_with_samples(ema_model, task.seen_classes, ctx.info.shape, ctx.device,
                                                f"after task {task.index}", groups=tasks)
        if self.cfg.model.class_cond:
            for t in ctx.scenario.tasks[: task.index + 1]:
                accs = [out.get(f"eval_acc_class_{c}") for c in t.classes]
                accs = [a for a in accs if a is not None]
                if accs:
                    out[f"eval_acc_task_{t.index}"] = round(float(np.mean(accs)), 6)
        return out, drawn

    def evaluate(self, ema_model, classes, image_shape, device, when: str = "", groups=None) -> Dict:
        """The ``eval_*`` columns only (``evaluate_with_samples``)."""
        return self.evaluate_with_samples(ema_model, classes, image_shape, device, when, groups)[0]

    def evaluate_with_samples(self, ema_model, classes, image_shape, device, when: str = "",
                              groups=None) -> Tuple[Dict, "DrawnSamples"]:
        """The ``eval_*`` columns for ``ema_model`` against the real images of ``classes``: samples
        drawn with the evaluation sampler, compared as the module docstring says. ``groups``
        ({name: classes}, class-conditional models): also ``eval_fid_{name}``, the FID of the samples
        of those classes against the reference images of those classes (CLoG's per-task quality)."""
        from .. import experiment
        from ..diffusion.respace import sampler_label
        from ..sampling.sample_sets import sample_set

        cfg, ev = self.cfg, self.ev
        t0 = time.time()
        seen = [int(c) for c in classes]
        ref, ref_feats = self._reference(seen)
        sampler = evaluation_sampler(ev, cfg)
        spec = experiment.sampling_spec(cfg, image_shape, ref.num_classes, sampler=sampler, eta=ev.eta,
                                        guidance_scale=1.0, device=device)
        labels = None
        if cfg.model.class_cond:
            labels = proportional_labels(seen, class_histogram(ref.labels, ref.num_classes), ev.num_samples)
        images, drawn = sample_set(ema_model, spec, num_samples=ev.num_samples, batch_size=ev.batch_size,
                                   seed=ev.seed if ev.seed >= 0 else cfg.seed, labels=labels, log=self.log,
                                   desc=f"evaluation{' ' + when if when else ''}: samples")
        t1 = time.time()
        faults.point("evaluation")
        kept = DrawnSamples(images, drawn, sampler, float(ev.eta))
        label = "one decoder pass" if cfg.generator == "vae" else sampler_label(sampler, ev.eta)
        what = "class-conditional " if cfg.model.class_cond else ""
        samples = ImageSet(images, drawn if cfg.model.class_cond else None, ref.num_classes,
                           f"{what}EMA samples{' ' + when if when else ''}, {label}")
        metrics = ev.metric_list
        out: Dict = {}
        protocols: List[str] = []
        extractors = [(self.features, [m for m in metrics if m not in CLASS_METRICS])]
        if self.classifier is self.features:
            extractors = [(self.features, metrics)]
        elif self.classifier is not None:
            extractors.append((self.classifier, [m for m in metrics if m in CLASS_METRICS]))
        for extractor, names in extractors:
            if not names:
                continue
            feats = ref_feats.get(extractor.name)
            if feats is None:
                feats = ref_feats[extractor.name] = extract_features(extractor, ref.images, ev.feature_batch_size,
                                                                     device)
            sample_feats = extract_features(extractor, samples.images, ev.feature_batch_size, device)
            rows = evaluate_sets(extractor, samples, ref, names, batch_size=ev.feature_batch_size, device=device,
                                 reference_features=feats, sample_features=sample_feats)
            if "fid" in names and groups and samples.labels is not None:
                out.update(self._group_fids(groups, samples.labels, sample_feats["pool"], ref.labels, feats["pool"]))
            for r in rows:
                out[f"eval_{r.name}"] = round(r.value, 6)
            protocols.append(f"{extractor.describe()}: {', '.join(r.name for r in rows if not r.name.startswith('acc_'))}")
        if "fid" in metrics:  # the floor: real training images of the seen classes, same counts
            like = labels if labels is not None else proportional_labels(
                seen, class_histogram(ref.labels, ref.num_classes), ev.num_samples)
            real = ImageSet(self._real_like(like), None, ref.num_classes, "real train images")
            rows = evaluate_sets(self.features, real, ref, ["fid"], batch_size=ev.feature_batch_size,
                                 device=device, reference_features=ref_feats[self.features.name])
            out["eval_fid_real"] = round(rows[0].value, 6)
            protocols.append(f"eval_fid_real: {len(real)} real {cfg.data.dataset} train images of the seen classes "
                             "(same class counts) vs the same reference")
        if any(k.startswith("eval_fid_task_") for k in out):
            protocols.append("eval_fid_task_j: FID of the samples of task j's classes against the reference images "
                             "of task j's classes (same features)")
        out["eval_features"] = self.features.name  # what makes two FIDs comparable (the weights' hash included)
        out["eval_samples"] = len(samples)
        out["eval_ref_images"] = len(ref)
        out["eval_sec"] = round(time.time() - t0, 3)
        self.log(f"evaluation{' ' + when if when else ''}: features and {len(out)} columns in {time.time() - t1:.1f} s "
                 f"({out['eval_sec']:.1f} s in all)")
        out["eval_protocol"] = (f"{len(samples)} {samples.description} vs {ref.description}; "
                                + "; ".join(protocols))
        return out, kept


    @staticmethod
    def _group_fids(groups, labels, feats, ref_labels, ref_feats) -> Dict:
        from .frechet import fid_from_features

        out = {}
        for name, classes in groups.items():
            mine, theirs = np.isin(labels, list(classes)), np.isin(ref_labels, list(classes))
            if mine.sum() >= 2 and theirs.sum() >= 2:
                out[f"eval_fid_{name}"] = round(float(fid_from_features(feats[mine], ref_feats[theirs])), 6)
        return out



