"""Sample a set of images from a trained diffusion model into an ADM-format .npz and a PNG grid.

Usage:
    python scripts/image_sample.py --config yaml/mnist/iid.yaml \
        --model_path experiments/mnist_iid/ema_0.999_000300.pt --num_samples 100 --batch_size 50
    mpiexec -n 2 python scripts/image_sample.py --config ... --model_path ...
    torchrun --nproc_per_node 2 scripts/image_sample.py --config ... --model_path ...
Options (aliases of the config's sample section):
    --timestep_respacing ddim50 --use_ddim true --eta 0.0 --clip_denoised true
    --class 3                     all samples of one class (class-conditional models)
    --classifier_path P --classifier_scale s   ADM classifier guidance (classifier from the
                                              config's classifier section, e.g. one trained
                                              with scripts/classifier_train.py)
    --out_dir D                   where to write (default: the run folder of the config)

Writes samples_{N}x{H}x{W}x{C}.npz (arr_0 uint8 NHWC, arr_1 int64 labels) and
samples_{N}x{H}x{W}x{C}.png. Sample i is seeded by (seed, i // batch_size): the same set comes out
for any number of ranks. ADM's evaluator expects RGB; grayscale sets keep C=1 unless
--to_rgb true (data.channels stays the model's).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from guided_diffusion import cli, dist_util, experiment  # noqa: E402
from guided_diffusion.checkpoint import load_weights  # noqa: E402
from guided_diffusion.config import ConfigError  # noqa: E402
from guided_diffusion.guidance import classifier_cond_fn  # noqa: E402
from guided_diffusion.image_util import save_grid, save_npz  # noqa: E402
from guided_diffusion.sampling import sample_set  # noqa: E402

ALIASES = {
    "model_path": "sample.model_path",
    "num_samples": "sample.num_samples",
    "batch_size": "sample.batch_size",
    "timestep_respacing": "sample.timestep_respacing",
    "use_ddim": "sample.use_ddim",
    "eta": "sample.eta",
    "clip_denoised": "sample.clip_denoised",
    "class": "sample.class_label",
    "classifier_path": "sample.classifier_path",
    "classifier_scale": "sample.classifier_scale",
    "out_dir": "sample.out_dir",
    "seed": "seed",
}


def main() -> int:
    argv = sys.argv[1:]
    to_rgb = False
    if "--to_rgb" in argv:
        i = argv.index("--to_rgb")
        to_rgb = argv[i + 1].lower() in ("1", "true", "yes")
        del argv[i : i + 2]
    cfg, args = cli.parse(__doc__.splitlines()[0], argv=argv, aliases=ALIASES)
    if cli.maybe_dry_run(cfg, args):
        return 0
    s = cfg.sample
    if not s.model_path:
        raise ConfigError("no model to sample: give --model_path (or sample.model_path in the config)")
    device = experiment.init_process(cfg)
    out_dir = s.out_dir or experiment.run_dir_of(cfg)
    info = experiment.dataset_info(cfg)
    model = experiment.build_model(cfg, info)
    load_weights(model, s.model_path, what="model")
    model.to(device)
    if s.class_label >= info.num_classes:
        raise ConfigError(f"--class {s.class_label}: the model has {info.num_classes} classes")
    diffusion = experiment.build_diffusion(cfg, s.timestep_respacing)
    cond_fn_for = None
    if s.classifier_path:
        classifier = experiment.build_classifier(cfg, info)
        load_weights(classifier, s.classifier_path, what="classifier")
        classifier.to(device).eval()
        cond_fn = classifier_cond_fn(classifier, s.classifier_scale)
        cond_fn_for = lambda y: cond_fn  # noqa: E731
    elif not cfg.model.class_cond and s.class_label >= 0:
        raise ConfigError("--class needs a class-conditional model (model.class_cond) or a classifier")
    progress = None
    if dist_util.is_main():
        from guided_diffusion.logger import progress_bar

        progress = lambda **kw: progress_bar(**kw)  # noqa: E731
    images, labels = sample_set(
        model, diffusion, num_samples=s.num_samples, batch_size=s.batch_size, image_shape=info.shape,
        seed=cfg.seed, class_cond=cfg.model.class_cond, classes=range(info.num_classes),
        class_label=s.class_label, use_ddim=s.use_ddim, eta=s.eta, clip_denoised=s.clip_denoised,
        cond_fn_for=cond_fn_for, device=device, progress=progress,
    )
    if dist_util.is_main():
        if to_rgb and images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        n, h, w, c = images.shape
        stem = os.path.join(out_dir, f"samples_{n}x{h}x{w}x{c}")
        os.makedirs(out_dir, exist_ok=True)
        save_npz(stem + ".npz", images, labels)
        save_grid(images[:100], stem + ".png")
        print(f"wrote {stem}.npz and {stem}.png", flush=True)
    dist_util.barrier()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
