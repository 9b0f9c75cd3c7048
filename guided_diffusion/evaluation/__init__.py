"""Evaluation of generative models: FID / sFID / IS / precision-recall with float64 statistics,
the class-distribution metrics of generative distillation (KLD, ARD), continual-learning accuracy
summaries, feature extractors (a domain CNN trained on the data set; the TF-FID Inception-v3 from a
local file), the per-task evaluator of the continual loop and the run reports.

Importing this package registers the ``evaluation:`` config section (``settings.EvaluationConfig``).
"""

from .class_metrics import (
    accuracy_matrix,
    ard,
    average_accuracy,
    class_histogram,
    forgetting,
    kld,
    per_class_accuracy,
)
from .domain_classifier import (
    DomainClassifier,
    DomainFeatures,
    default_classifier_path,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from .extractors import build_feature_extractor
from .features import EXTRACTORS, FeatureExtractor, extract_features, register_extractor
from .frechet import (
    FeatureStats,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    frechet_distance_full,
)
from .inception import (
    InceptionFeatures,
    TFInceptionV3,
    load_tf_inception,
    resize_bilinear_tf1,
)
from .inception_score import inception_score
from .metrics import METRICS, MetricInputs, register_metric
from .precision_recall import manifold_radii, precision_recall
from .reference import (
    ImageSet,
    load_image_set,
    load_reference_stats,
    save_reference_stats,
)
from .settings import (
    EvaluationConfig,
    classifier_path_of,
    evaluation_of,
    train_classifier_from_config,
)
from .suite import ALL_METRICS, MetricRow, evaluate_sets, format_table

__all__ = [
    "accuracy_matrix", "ard", "average_accuracy", "class_histogram", "forgetting", "kld", "per_class_accuracy",
    "DomainClassifier", "DomainFeatures", "default_classifier_path", "load_domain_classifier",
    "save_domain_classifier", "train_domain_classifier", "EXTRACTORS", "FeatureExtractor",
    "build_feature_extractor", "extract_features", "register_extractor", "FeatureStats", "feature_statistics",
    "fid_from_features", "frechet_distance", "frechet_distance_full", "InceptionFeatures", "TFInceptionV3",
    "load_tf_inception", "resize_bilinear_tf1", "inception_score", "manifold_radii", "precision_recall",
    "ImageSet", "load_image_set", "load_reference_stats", "save_reference_stats", "EvaluationConfig",
    "classifier_path_of", "evaluation_of", "train_classifier_from_config", "ALL_METRICS", "MetricRow",
    "evaluate_sets", "format_table", "METRICS", "MetricInputs", "register_metric",
]
