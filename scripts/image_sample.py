"""Sample a set of images from a trained diffusion model into an ADM-format .npz and a PNG grid.

Usage:
    python scripts/image_sample.py --config yaml/mnist/iid.yaml \
        --model_path experiments/mnist_iid/ema_0.999_000300.pt --num_samples 100 --batch_size 50
    mpiexec -n 2 python scripts/image_sample.py --config ... --model_path ...
    torchrun --nproc_per_node 2 scripts/image_sample.py --config ... --model_path ...
Options (aliases of the config's sample section):
    --sampler ddim50 --eta 0.0 --clip_denoised true
                                  the sampler (sample.sampler): ddimN is DDIM (with --eta), N is N
                                  ancestral steps ("": every step), dpmpp_2mN and unipcN the solvers
                                  (Nt trailing, Nl log-SNR timesteps)
    --sampler dpmpp_2m --steps 10 [--spacing trailing|logsnr|adm]
                                  the same by name (ddim, ancestral, dpmpp_2m, unipc) and number of
                                  model evaluations (dpmpp_2m 10 trailing = "dpmpp_2m10t", ddim 10 adm =
                                  "ddim10")
    --timestep_respacing 250 [--use_ddim true]
                                  ADM's flags: sample.sampler by ADM's rule (250: ancestral; ddim50:
                                  DDIM; --use_ddim true over "": ddim1000), shown by --dry-run; not
                                  with --sampler
    --class 3                     all samples of one class (class-conditional models)
    --classifier_path P --classifier_scale s   ADM classifier guidance (classifier from the
                                              config's classifier section, e.g. one trained
                                              with scripts/classifier_train.py)
    --classes 0,1,2,3             samples spread over these classes, class by class (one grid row
                                  per class when num_samples is a multiple); default: uniform over all
    --prompt "a handwritten digit seven" [--prompt ...]
                                  a text-conditional model (the text section): samples of these
                                  prompts, spread over them as --classes (arr_1: the prompt's index)
    --out_dir D                   where to write (default: $OPENAI_LOGDIR as ADM, else beside the model)
Without --config, the model's architecture is read from the export JSON beside the checkpoint
(ema_{rate}_{step}.json, written with every checkpoint), else from its run's config.yaml; ADM's own
checkpoints (no JSON) take ADM's defaults under the flags, as in guided-diffusion.
    --guidance_scale w            classifier-free guidance eps_u + w (eps_c - eps_u) (models trained
                                  with train.uncond_p > 0; 1 = conditional)
    --compose 3,8 [--compose_weights 1,1]   every sample from the product of these classes'
                                  conditionals (Du et al. 2023); arr_1 holds the first label
    --mcmc ula|uha|mala|cha       MCMC corrections after each reverse step (mala, cha: energy
                                  models, model.parameterization energy); --mcmc_steps K
                                  --mcmc_step_size c (step c * beta_t) --mcmc_start_t t (after
                                  the steps from timesteps >= t, as Continual-Diffusers; default
                                  50, 0 all) --mcmc_damping --mcmc_leapfrog_steps --mcmc_mass
                                  beta|unit (Hamiltonian mass: beta_t as Continual-Diffusers)

Writes samples_{N}x{H}x{W}x{C}.npz (arr_0 uint8 NHWC, arr_1 int64 labels) and
samples_{N}x{H}x{W}x{C}.png, and prints the cost: seconds per image and model evaluations per
image (reverse steps, MCMC evaluations; each is two network passes under guidance, K+1 for a
K-label composition, and a forward plus a backward for an energy model), MCMC acceptance. Sample i is seeded by (seed, i // batch_size): the same set comes out
for any number of ranks. ADM's evaluator expects RGB; grayscale sets keep C=1 unless
--to_rgb true (data.channels stays the model's).

A continual run's LoRA or ensemble network (``method: lora`` / ``ensemble``) is rebuilt as its method
adapted it, from the config's method section (give the run's config.yaml) or from the JSON beside a
``.safetensors`` export, which records it; each sample goes through its label's task's adapter or network.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

from guided_diffusion import experiment
from guided_diffusion.continual.adaptation import adapted_model, check_plain_weights, with_export_record
from guided_diffusion.diffusion.respace import sampler_label
from guided_diffusion.image_util import save_grid, save_npz
from guided_diffusion.launch import cli
from guided_diffusion.launch.beside import config_beside
from guided_diffusion.runtime import dist_util
from guided_diffusion.runtime.checkpoint import (
    load_checked,
    load_state_dict_file,
    load_weights,
)
from guided_diffusion.runtime.config import ConfigError
from guided_diffusion.sampling.classifier_guidance import classifier_cond_fn
from guided_diffusion.sampling.mcmc import MCMCSettings
from guided_diffusion.sampling.sample_sets import sample_set

ALIASES = {
    "model_path": "sample.model_path",
    "num_samples": "sample.num_samples",
    "batch_size": "sample.batch_size",
    "sampler": "sample.sampler",
    "eta": "sample.eta",
    "clip_denoised": "sample.clip_denoised",
    "class": "sample.class_label",
    "classifier_path": "sample.classifier_path",
    "classifier_scale": "sample.classifier_scale",
    "out_dir": "sample.out_dir",
    "guidance_scale": "sample.guidance_scale",
    "compose": "sample.compose",
    "compose_weights": "sample.compose_weights",
    "mcmc": "sample.mcmc",
    "mcmc_steps": "sample.mcmc_steps",
    "mcmc_step_size": "sample.mcmc_step_size",
    "mcmc_start_t": "sample.mcmc_start_t",
    "mcmc_damping": "sample.mcmc_damping",
    "mcmc_leapfrog_steps": "sample.mcmc_leapfrog_steps",
    "mcmc_mass": "sample.mcmc_mass",
    "seed": "seed",
}


def _class_list(text: str):
    try:
        out = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class labels like 0,1,2,3, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected class labels like 0,1,2,3")
    return out


OPTIONS = [
    (["--classes"], dict(type=_class_list, default=None, metavar="0,1,2",
                         help="samples spread over these classes, class by class (default: uniform over all)")),
    (["--prompt"], dict(action="append", default=None, metavar="TEXT",
                        help="a text-conditional model (text section): sample from this prompt; repeat it for "
                             "several (spread over them, a grid row each; arr_1 holds each sample's prompt index)")),
    (["--to_rgb"], dict(type=cli.bool_type("--to_rgb"), default=False, metavar="BOOL",
                        help="write grayscale sets as RGB (ADM's evaluator expects 3 channels; default false)")),
    (["--steps"], dict(type=int, default=None, metavar="N",
                       help="with --sampler NAME (ddim, ancestral, dpmpp_2m or unipc): its model evaluations")),
    (["--spacing"], dict(default="trailing", metavar="S",
                         help="timesteps of --sampler NAME --steps N: trailing (default), logsnr or adm (ADM's, ddim/ancestral)")),
]
def sampler_for(sampler: str, steps: int, spacing: str = "trailing") -> str:
    """The sampler value of ``--sampler NAME --steps N --spacing S``."""
    from guided_diffusion.diffusion.respace import SPACING_SUFFIX, respacing_spec
    from guided_diffusion.sampling.samplers import SAMPLERS, SOLVERS

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if steps is None or steps < 1:
        raise ConfigError(f"--sampler {sampler} needs --steps N (model evaluations, N >= 1)")
    if spacing not in SPACING_SUFFIX:
        raise ConfigError(f"--spacing {spacing!r}: expected one of {', '.join(SPACING_SUFFIX)}")
    if sampler in SOLVERS and spacing == "adm":
        raise ConfigError(f"--spacing adm is ADM's DDIM/ancestral spacing; {sampler} takes trailing or logsnr")
    return respacing_spec(sampler, steps, spacing)


USES = ("data", "model", "diffusion", "train", "sample", "classifier", "dist", "text", "vae", "latent",
        "method", "continual")  # method, continual: a LoRA or ensemble network is rebuilt as its method adapted it


def sampler_words(argv):
    """``argv`` with ``--sampler NAME --steps N [--spacing S]`` as ``--sampler VALUE`` (``sampler_for``):
    ``--sampler`` is ``sample.sampler``, by value or by name and steps; ADM's ``--timestep_respacing`` and
    ``--use_ddim`` (the same key by ADM's rule) do not go with it."""
    from guided_diffusion.sampling.samplers import SAMPLERS

    def value_of(flag):
        for i, word in enumerate(argv):
            if word == flag and i + 1 < len(argv):
                return i, 2, argv[i + 1]
            if word.startswith(flag + "="):
                return i, 1, word[len(flag) + 1:]
        return None

    sampler, steps, spacing = value_of("--sampler"), value_of("--steps"), value_of("--spacing")
    if sampler is None:
        if steps is not None or spacing is not None:
            raise ConfigError("--steps and --spacing go with --sampler NAME (or give the value: --sampler ddim50)")
        return argv
    adm = [f for f in ("--timestep_respacing", "--use_ddim") if value_of(f) is not None]
    if adm:
        raise ConfigError(f"--sampler is the sampler: drop ADM's {' and '.join(adm)}")
    if steps is None and sampler[2] in SAMPLERS:
        raise ConfigError(f"--sampler {sampler[2]} needs --steps N (model evaluations), or give the value: --sampler "
                          f"{sampler[2] if sampler[2] != 'ancestral' else ''}50")
    if steps is None:
        return argv
    try:
        n = int(steps[2])
    except ValueError:
        raise ConfigError(f"--steps {steps[2]!r}: expected an integer") from None
    value = sampler_for(sampler[2], n, spacing[2] if spacing else "trailing")
    drop = {j for i, k, _ in (sampler, steps) + ((spacing,) if spacing else ()) for j in range(i, i + k)}
    return [w for j, w in enumerate(argv) if j not in drop] + ["--sampler", value]


def _given_model_path(argv) -> str:
    """--model_path P (or sample.model_path=P) among the words of the command line, else ""."""
    for i, word in enumerate(argv):
        if word == "--model_path" and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in ("--model_path=", "sample.model_path="):
            if word.startswith(prefix):
                return word[len(prefix):]
    return ""


def main() -> int:
    argv = sampler_words(sys.argv[1:])
    model_path = _given_model_path(argv)
    default_config, note = None, ""
    if model_path and not any(w == "--config" or w.startswith("--config=") for w in argv) and os.path.isfile(model_path):
        # No config: the architecture from the JSON beside the checkpoint (or its run's config.yaml), not ADM's
        # defaults, which would not fit it; the command line's own words still win (they come after).
        default_config, words, note = config_beside(model_path)
        argv = words + argv
    cfg, args = cli.parse(__doc__, aliases=ALIASES, adm="sample", options=OPTIONS, uses=USES,
                          program="image_sample.py", argv=argv, default_config=default_config)
    if note and dist_util.is_main():
        print(f"note: no --config: {note}", flush=True)
    to_rgb, only_classes = args.to_rgb, args.classes
    if cli.maybe_dry_run(cfg, args):
        return 0
    s = cfg.sample
    if not s.model_path:
        raise ConfigError("no model to sample: give --model_path (or sample.model_path in the config)")
    device = experiment.init_process(cfg)
    # ADM writes into its log folder ($OPENAI_LOGDIR); without one, beside the model (a run's own folder).
    out_dir = s.out_dir or os.environ.get("OPENAI_LOGDIR") or os.path.dirname(s.model_path) or "."
    weights = load_state_dict_file(s.model_path)
    info = experiment.info_for_weights(cfg, weights)  # no data set needed when the weights tell
    info = experiment.model_info(cfg, info)  # latent diffusion: the latents' shape (samples are decoded)
    # A continual method's adapted network (LoRA, the ensemble): rebuilt from the run's config or the export's JSON.
    cfg, info = with_export_record(cfg, info, s.model_path)
    check_plain_weights(cfg, weights, s.model_path)
    model = adapted_model(cfg, info, experiment.build_model(cfg, info))
    load_checked(model, weights, s.model_path, what="model")
    del weights
    model.to(device)
    if s.class_label >= info.num_classes:
        raise ConfigError(f"--class {s.class_label}: the model has {info.num_classes} classes")
    bad = [c for c in s.compose if not 0 <= c < info.num_classes]
    if bad:
        raise ConfigError(f"--compose {bad}: the model has {info.num_classes} classes")
    labels, nrow = None, None
    if only_classes is not None:
        if not only_classes or any(not 0 <= c < info.num_classes for c in only_classes):
            raise ConfigError(f"--classes {only_classes}: the model has {info.num_classes} classes")
        if s.compose or s.class_label >= 0:
            raise ConfigError("--classes cannot be combined with --compose or --class")
        if not cfg.model.class_cond and not s.classifier_path:
            raise ConfigError("--classes needs a class-conditional model (model.class_cond) or a classifier")
        nrow = -(-s.num_samples // len(only_classes))  # samples per class: a grid row each
        labels = [only_classes[i // nrow] for i in range(s.num_samples)]
    if args.prompt:
        if only_classes is not None or s.compose or s.class_label >= 0:
            raise ConfigError("--prompt cannot be combined with --classes, --compose or --class")
        labels, nrow = prompt_labels(cfg, model, args.prompt, s.num_samples)
    mcmc = MCMCSettings.from_config(s)
    spec = experiment.sample_spec(cfg, info, device, mcmc=mcmc)
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
        from guided_diffusion.runtime.logger import progress_bar

        progress = lambda **kw: progress_bar(**kw)  # noqa: E731
    start = time.time()
    first_prompt = getattr(model, "num_prompts", 0) - len(args.prompt or [])
    images, labels = sample_set(
        model, spec, num_samples=s.num_samples, batch_size=s.batch_size, seed=cfg.seed,
        classes=range(info.num_classes), class_label=s.class_label, labels=labels, cond_fn_for=cond_fn_for,
        progress=progress, compose=s.compose, compose_weights=s.compose_weights,
    )
    seconds = time.time() - start
    if args.prompt:
        labels = labels - first_prompt  # the index of each sample's prompt in --prompt order
    if dist_util.is_main():
        if cfg.generator == "vae":  # one decoder pass, no reverse steps
            print(f"cost: {seconds / max(len(images), 1):.3f} s/image on this process; 1 decoder pass per image",
                  flush=True)
        else:
            print(cost_line(s, mcmc, seconds, len(images), spec.diffusion.num_timesteps), flush=True)
        if to_rgb and images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        n, h, w, c = images.shape
        stem = os.path.join(out_dir, f"samples_{n}x{h}x{w}x{c}")
        os.makedirs(out_dir, exist_ok=True)
        save_npz(stem + ".npz", images, labels)
        save_grid(images[:100], stem + ".png", nrow=nrow)
        print(f"wrote {stem}.npz and {stem}.png", flush=True)
    dist_util.barrier()
    dist_util.cleanup()
    return 0


def prompt_labels(cfg, model, prompts, num_samples: int) -> tuple:
    """Append ``prompts``' encodings to a text-conditional model's table (after its classes' and the null
    prompt, whose indices stay) and return (each sample's row, samples per prompt)."""
    from guided_diffusion.pretrained.text_encoder import encode_prompts

    if not cfg.text.encoder or not hasattr(model, "set_prompts"):
        raise ConfigError("--prompt needs a text-conditional model (text.encoder in the config)")
    states, pooled = encode_prompts(cfg.text.encoder, list(prompts), cfg.text.max_length)
    first = model.num_prompts
    model.set_prompts(torch.cat([model.states.cpu(), states]), torch.cat([model.pooled.cpu(), pooled]))
    per = -(-num_samples // len(prompts))
    return [first + i // per for i in range(num_samples)], per


def cost_line(s, mcmc, seconds: float, n: int, steps: int) -> str:
    """The sampler (``ddim50 DDIM eta 0.0``, ``25 ancestral``), seconds and model evaluations per image
    (this rank's batches), and the MCMC acceptance."""
    n_batches = max(1, -(-n // s.batch_size))
    line = (f"cost: {seconds / max(n, 1):.3f} s/image on this process with the sampler "
            f"{sampler_label(s.sampler, s.eta)}")
    if mcmc is None:
        return line + f"; {steps} model evaluations per image ({steps} reverse steps)"
    st = mcmc.stats
    batches = max(1, st.get("reverse_steps", 0) // steps) if st.get("reverse_steps") else n_batches
    evals = st.get("mcmc_evals", 0) / batches
    line += (f"; {steps + evals:.0f} model evaluations per image ({steps} reverse steps + {evals:.0f} {mcmc.sampler} "
             f"evaluations at {st.get('corrected_levels', 0) // batches} levels)")
    if st.get("proposals"):
        line += f"; acceptance {st['accepted'] / st['proposals']:.3f}"
    return line


if __name__ == "__main__":
    cli.run_main(main)
