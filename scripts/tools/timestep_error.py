"""A model's noise-prediction error at each timestep, on real test images: where along the chain it has learned.

Usage:
    python scripts/tools/timestep_error.py --config RUN/config.yaml --models A.safetensors B.safetensors \
        --timesteps 0:1000:50 --images 500 --out errors.csv

For each timestep t of the list (original 1000-step indices) and each model, the mean over the images of
||eps_theta(x_t, t, y) - eps||^2 / (C H W), with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, x0
``--images`` test images of ``data.dataset`` drawn at random (their labels as ``y``), and the same eps for every model and t
(seeded by ``--seed``): the models are compared pairwise. Every model is built from ``--config`` (its
``model`` section, or the one of the export JSON beside the weights; a LoRA or ensemble network as its
method adapted it, from the config's method or the export JSON's) and loaded strictly. Prints a table and
writes ``--out`` (a row per timestep, a column per model). A model that learned only part of the chain
(e.g. DKDM's iterative student, whose last updates all sit at small t) shows it as errors far above the
others' at the timesteps it forgot.
"""

import argparse
import csv
import dataclasses
import json
import os
import sys

import torch

from guided_diffusion import experiment
from guided_diffusion.continual.adaptation import adapted_model, check_plain_weights, looks_adapted, with_export_record
from guided_diffusion.runtime.checkpoint import load_checked, load_state_dict_file
from guided_diffusion.runtime.config import ConfigError, load_config


def timesteps_of(spec: str, steps: int):
    try:
        if ":" in spec:
            a, b, s = (int(v) for v in spec.split(":"))
            out = list(range(a, b, s))
        else:
            out = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"--timesteps {spec!r}: give START:STOP:STEP or a comma list of integers") from None
    bad = [t for t in out if not 0 <= t < steps]
    if not out or bad:
        raise ValueError(f"--timesteps {spec!r}: timesteps must lie in [0, {steps}) (got {bad or 'none'})")
    return out


def model_config(cfg, path):
    """``cfg`` with the ``model`` section of the export JSON beside ``path`` (``ema_0.999_004000.json`` beside
    its ``.safetensors``), when there is one: each model is built as it was trained."""
    side = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(side):
        return cfg
    with open(side) as f:
        saved = json.load(f).get("model", {})
    known = {f.name for f in dataclasses.fields(cfg.model)}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{k: v for k, v in saved.items() if k in known}))


@torch.inference_mode()
def errors(cfg, paths, timesteps, n_images, seed, batch=100):
    info = experiment.dataset_info(cfg)
    x0, y, _ = experiment.load_split(cfg, "test")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x0), generator=gen)[:n_images]  # the test split may be sorted by class
    x0, y = x0[pick].float(), y[pick]
    diffusion = experiment.build_diffusion(cfg, "")
    noise = torch.randn(x0.shape, generator=gen)
    out = {t: {} for t in timesteps}
    for path in paths:
        weights = load_state_dict_file(path)
        mcfg, minfo = with_export_record(model_config(cfg, path), info, path)
        model = experiment.build_model(mcfg, minfo)
        if looks_adapted(weights):  # a LoRA or ensemble network: rebuilt as its method adapted it
            check_plain_weights(mcfg, weights, path)
            model = adapted_model(mcfg, minfo, model)
        load_checked(model, weights, path)
        model.eval()
        for t in timesteps:
            total = 0.0
            for i in range(0, len(x0), batch):
                xb, eb, yb = x0[i:i + batch], noise[i:i + batch], y[i:i + batch]
                tt = torch.full((len(xb),), t, dtype=torch.long)
                xt = diffusion.q_sample(xb, tt, noise=eb)
                kwargs = {"y": yb} if cfg.model.class_cond else {}
                pred = model(xt, diffusion._scale_timesteps(tt), **kwargs)[:, :xb.shape[1]]
                total += ((pred - eb) ** 2).mean(dim=(1, 2, 3)).sum().item()
            out[t][path] = total / len(x0)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--models", nargs="+", required=True, help="weights files (.safetensors / .pt) to compare")
    p.add_argument("--timesteps", default="0:1000:50")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config")
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
        ts = timesteps_of(args.timesteps, cfg.diffusion.diffusion_steps)
        if args.images <= 0:
            raise ValueError(f"--images must be positive, got {args.images}")
        missing = [m for m in args.models if not os.path.exists(m)]
        if missing:
            raise ValueError(f"--models: no such file: {', '.join(missing)}")
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, cfg.train.num_threads or torch.get_num_threads()))
    try:
        table = errors(cfg, args.models, ts, args.images, args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [os.path.relpath(m) for m in args.models]
    print("t," + ",".join(names))
    for t in ts:
        print(f"{t}," + ",".join(f"{table[t][m]:.5f}" for m in args.models))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t", *names])
            for t in ts:
                w.writerow([t, *(f"{table[t][m]:.6f}" for m in args.models)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
