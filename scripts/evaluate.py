"""Evaluate a set of images against a reference: FID, sFID, IS, precision/recall, KLD, ARD, accuracy.

Usage:
    python scripts/evaluate.py SAMPLES REFERENCE [options]
    python scripts/evaluate.py experiments/run/samples_1000x28x28x1.npz mnist5k            # domain features
    python scripts/evaluate.py mnist5k mnist5k --samples_split train --ref_split test        # real vs real
    python scripts/evaluate.py samples.npz ref_batch.npz --features inception --inception_path P.pth
    torchrun --nproc_per_node 2 scripts/evaluate.py samples.npz mnist5k                    # sharded features

SAMPLES and REFERENCE are each an ADM-format ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1``
labels), an image folder, or a data set name (``mnist5k``, ``digits``, ``cifar10`` with
--data_dir ...; split by --samples_split / --ref_split, default test). REFERENCE may also be a
statistics ``.npz`` (``mu``, ``sigma`` [, ``mu_s``, ``sigma_s``]: ADM's reference batches or one
written by --save_ref), which gives FID / sFID only. Labels of SAMPLES (``arr_1``) are read as the
intended classes of class-conditional samples (per-class accuracy); those of REFERENCE give the
true class histogram (KLD, ARD).

Feature extractors (--features): ``domain`` (default): the data set's own CNN classifier
(--classifier_path, default model/eval_classifier_{dataset}.safetensors; train it with
scripts/train_eval_classifier.py); ``inception``: the TF-FID Inception-v3 from a local file
(--inception_path or $GD_INCEPTION_WEIGHTS; never downloaded). Every number is printed with its
protocol: extractor, number of samples, reference. Statistics are float64.

Options: --metrics fid,sfid,is,precision,recall,kld,ard,class_acc (default: all that apply)
  --classes 0,1,2 (keep only these classes in both sets)  --limit N (N evenly spaced samples)
  --batch_size B (feature batch)  --save_ref STATS.npz (cache the reference statistics; reused
  when the extractor and the images' hash match)  --json OUT.json  --config Y.yaml (defaults from
  its evaluation and data sections)  --device cpu|cuda
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import cli, dist_util  # noqa: E402
from guided_diffusion.config import ConfigError, load_config  # noqa: E402
from guided_diffusion.evaluation import (  # noqa: E402
    ALL_METRICS,
    build_feature_extractor,
    default_classifier_path,
    evaluate_sets,
    format_table,
    load_image_set,
    load_reference_stats,
)
from guided_diffusion.data import dataset_names  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("samples", help=".npz, image folder or data set name")
    p.add_argument("reference", help=".npz (images or statistics), image folder or data set name")
    p.add_argument("--config", help="YAML whose evaluation/data sections give defaults")
    p.add_argument("--features", choices=("domain", "inception"), help="feature extractor (default: domain)")
    p.add_argument("--classifier_path", help="domain classifier .safetensors")
    p.add_argument("--inception_path", help="TF-FID Inception-v3 weights file")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(ALL_METRICS)}")
    p.add_argument("--samples_split", default="test", choices=("train", "test"))
    p.add_argument("--ref_split", default="test", choices=("train", "test"))
    p.add_argument("--data_dir", help="data_dir of a data set given by name")
    p.add_argument("--classes", help="keep only these classes (comma-separated) in both sets")
    p.add_argument("--limit", type=int, default=0, help="use N evenly spaced samples (0: all)")
    p.add_argument("--batch_size", type=int, help="feature-extraction batch per rank (default 250)")
    p.add_argument("--save_ref", help="write / reuse the reference statistics in this .npz")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--device", default="", help="cpu | cuda (default: the rank's device)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved protocol and exit")
    return p.parse_args(argv)


def main() -> int:
    import guided_diffusion.continual.methods  # noqa: F401  (continual configs: the method schemas)

    args = parse_args()
    ev = None
    dataset = None
    if args.config:
        cfg = load_config(args.config)
        ev, dataset = cfg.evaluation, cfg.data.dataset
    features = args.features or (ev.features if ev else "domain")
    metrics = [m.strip() for m in (args.metrics or (ev.metrics if ev else ",".join(ALL_METRICS))).split(",") if m.strip()]
    batch_size = args.batch_size or (ev.feature_batch_size if ev else 250)
    for name in (args.reference, args.samples):
        if dataset is None and name in dataset_names():
            dataset = name
    classifier_path = args.classifier_path or (ev.classifier_path if ev else "")
    if features == "domain" and not classifier_path:
        if not dataset:
            raise ConfigError("--features domain needs --classifier_path (no data set name to find the default)")
        classifier_path = default_classifier_path(dataset)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    if args.dry_run:
        print(json.dumps(dict(samples=args.samples, reference=args.reference, features=features, metrics=metrics,
                              classifier_path=classifier_path, classes=classes), indent=2))
        return 0

    dist_util.init()
    device = args.device or dist_util.dev()
    if features == "domain":
        extractor = build_feature_extractor("domain", classifier_path=classifier_path, device=device)
    else:
        weights = args.inception_path or (ev.inception_path if ev else "") or None
        extractor = build_feature_extractor("inception", weights_path=weights)
        extractor.to(device)
    samples = load_image_set(args.samples, split=args.samples_split, classes=classes, data_dir=args.data_dir,
                             limit=args.limit)
    reference = None
    if args.reference.endswith(".npz") and os.path.isfile(args.reference):
        stats = load_reference_stats(args.reference)
        import numpy as np

        with np.load(args.reference, allow_pickle=False) as z:
            has_images = "arr_0" in z.files
        if stats is not None and not has_images:
            stats["source"] = stats.get("source") or args.reference
            reference = stats
    if reference is None:
        reference = load_image_set(args.reference, split=args.ref_split, classes=classes, data_dir=args.data_dir)
    progress = None
    if dist_util.is_main():
        from guided_diffusion.logger import progress_bar

        progress = lambda **kw: progress_bar(**kw)  # noqa: E731
    rows = evaluate_sets(extractor, samples, reference, metrics, batch_size=batch_size, device=device,
                         ref_cache=args.save_ref or "", progress=progress)
    if dist_util.is_main():
        ref_desc = reference.description if hasattr(reference, "description") else f"statistics of {reference.get('source')}"
        print(f"samples:   {samples.description}")
        print(f"reference: {ref_desc}")
        print(f"features:  {extractor.describe()}")
        print("(every number below: these samples, this reference, these features)")
        print()
        print(format_table(rows), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([r.__dict__ for r in rows], f, indent=2)
    dist_util.barrier()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
