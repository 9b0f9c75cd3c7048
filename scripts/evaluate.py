"""Evaluate a set of images against a reference: FID, sFID, IS, precision/recall, KLD, ARD, accuracy.

Usage (ADM's order, as its ``evaluator.py REF_BATCH SAMPLE_BATCH``; or name both, and nothing is guessed):
    python scripts/evaluate.py REFERENCE SAMPLES [options]
    python scripts/evaluate.py --ref REFERENCE --samples SAMPLES [options]
    python scripts/evaluate.py mnist5k experiments/run/samples_1000x28x28x1.npz            # domain features
    python scripts/evaluate.py --ref mnist5k --ref_split test --samples mnist5k --samples_split train  # real vs real
    python scripts/evaluate.py VIRTUAL_imagenet64_labeled.npz samples.npz --features inception --inception_path P.pth
    torchrun --nproc_per_node 2 scripts/evaluate.py mnist5k samples.npz                    # sharded features

Swapped inputs are refused, not evaluated: in the positional form, a SAMPLES that holds only
statistics, a REFERENCE named ``samples*`` (``image_sample.py``'s files) beside a SAMPLES that is
not, or a data set name as SAMPLES beside a file as REFERENCE, stop with an error; ``--ref`` /
``--samples`` say it explicitly. (Before this version the order was SAMPLES REFERENCE.)

SAMPLES and REFERENCE are each an ADM-format ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1``
labels), an image folder, or a data set name (``mnist5k``, ``digits``, ``cifar10`` with
--data_dir ...; split by --samples_split / --ref_split, default test). REFERENCE may also be a
statistics ``.npz`` (``mu``, ``sigma`` [, ``mu_s``, ``sigma_s``]: one written by --save_ref), which
gives FID / sFID only. ADM's reference batches (``VIRTUAL_*.npz``: ``arr_0`` images and Inception
``mu``/``sigma``) are read as ADM reads them: with --features inception, FID / sFID against the
stored statistics and the other metrics from the images; with domain features, everything from the
images (the stored statistics are Inception's). Labels of SAMPLES (``arr_1``) are read as the
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

from guided_diffusion.data import dataset_names
from guided_diffusion.runtime import dist_util
from guided_diffusion.evaluation import (
    ALL_METRICS,
    build_feature_extractor,
    default_classifier_path,
    evaluate_sets,
    format_table,
    load_image_set,
    load_reference_stats,
)
from guided_diffusion.evaluation.reference import missing_input
from guided_diffusion.launch import cli
from guided_diffusion.runtime.config import ConfigError, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("reference", nargs="?", help="REF: .npz (images, statistics or ADM's reference batch), image "
                   "folder or data set name (ADM's order: REF first)")
    p.add_argument("samples", nargs="?", help="SAMPLES: .npz, image folder or data set name")
    p.add_argument("--ref", dest="ref_named", metavar="REFERENCE", help="the reference, named (instead of REF)")
    p.add_argument("--samples", dest="samples_named", metavar="SAMPLES", help="the samples, named (instead of SAMPLES)")
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
    args = p.parse_args(argv)
    positional = [a for a in (args.reference, args.samples) if a is not None]
    named = [a for a in (args.ref_named, args.samples_named) if a is not None]
    if positional and named:
        p.error("give REF SAMPLES as two positional arguments, or --ref and --samples, not a mix")
    if named:
        if len(named) != 2:
            p.error("--ref and --samples go together")
        args.reference, args.samples = args.ref_named, args.samples_named
    elif len(positional) != 2:
        p.error("two inputs are needed: REF SAMPLES (ADM's order) or --ref R --samples S")
    for name in (args.reference, args.samples):  # before any other check: a typo is named as one
        if not (os.path.exists(name) or name in dataset_names()):
            raise FileNotFoundError(missing_input(name))
    if not named:
        problem = swapped_inputs(args.reference, args.samples)
        if problem:
            raise ConfigError(f"{problem}; the order is ADM's, REF SAMPLES (it was SAMPLES REFERENCE before): "
                              f"swap them, or name them with --ref / --samples")
    return args


def _stats_only(path: str) -> bool:
    if not (path.endswith(".npz") and os.path.isfile(path)):
        return False
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files and "arr_0" not in z.files
    except Exception:  # unreadable: load_image_set names the problem later
        return False


def swapped_inputs(reference: str, samples: str) -> str:
    """Why the positional REF SAMPLES look swapped, or "" (see the manual: three signs)."""
    if _stats_only(samples):
        return f"SAMPLES {samples!r} holds only statistics (mu, sigma): that is a reference"
    ref_name, smp_name = (os.path.basename(os.path.normpath(x)).lower() for x in (reference, samples))
    if ref_name.startswith("samples") and not smp_name.startswith("samples"):
        return f"REF {reference!r} is named like image_sample.py's samples and SAMPLES {samples!r} is not"
    names = dataset_names()
    if samples in names and reference not in names:
        return f"SAMPLES {samples!r} is a real data set and REF {reference!r} a file"
    return ""


def conversion_note(extractor, images) -> str:
    """What the domain classifier's input conversion does to ``images`` (uint8 NHWC), or "" when nothing:
    another channel count (RGB to grey, grey to RGB) or another size (padded or resized to its size)."""
    arch = getattr(getattr(extractor, "model", None), "arch", None)
    if images is None or not isinstance(arch, dict) or images.ndim != 4:
        return ""
    _, h, w, c = images.shape
    size, channels = arch.get("image_size"), arch.get("in_channels")
    steps = []
    if c != channels:
        steps.append({(3, 1): "RGB to grey", (1, 3): "grey to RGB"}.get((c, channels), f"{c} to {channels} channels"))
    if (h, w) != (size, size):
        steps.append(f"{h}x{w} to {size}x{size} px")
    if not steps:
        return ""
    return (f"are {h}x{w}x{c}; the domain classifier reads {size}x{size}x{channels}: converted "
            f"({', '.join(steps)}) before the features")


def main() -> int:
    import guided_diffusion.continual.methods  # noqa: F401  (continual configs: the method schemas)

    args = parse_args()
    ev = None
    dataset = None
    if args.config:
        cfg = load_config(args.config, record=cli.saved_by_a_run(args.config))  # a run's config.yaml: as it ran
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
    reference, reference_stats = None, None
    if args.reference.endswith(".npz") and os.path.isfile(args.reference):
        stats = load_reference_stats(args.reference)
        import numpy as np

        with np.load(args.reference, allow_pickle=False) as z:
            has_images = "arr_0" in z.files
        if stats is not None:
            stats["source"] = stats.get("source") or args.reference
            if not has_images:
                reference = stats
            elif features == "inception" and not classes:  # ADM's reference batch, read as ADM does
                reference_stats = stats
            elif dist_util.is_main():
                why = "--classes keeps a subset" if classes else "they are Inception's, the features are domain"
                print(f"note: {args.reference} carries statistics; not used ({why}): FID from its images")
    if reference is None:
        reference = load_image_set(args.reference, split=args.ref_split, classes=classes, data_dir=args.data_dir)
    if dist_util.is_main():
        for what, images in (("SAMPLES", samples), ("REF", reference)):
            note = conversion_note(extractor, getattr(images, "images", None))
            if note:
                print(f"note: {what} {note}", flush=True)
    progress = None
    if dist_util.is_main():
        from guided_diffusion.runtime.logger import progress_bar

        progress = lambda **kw: progress_bar(**kw)  # noqa: E731
    rows = evaluate_sets(extractor, samples, reference, metrics, batch_size=batch_size, device=device,
                         ref_cache=args.save_ref or "", progress=progress, reference_stats=reference_stats)
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
