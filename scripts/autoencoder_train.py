"""Train the autoencoder stage of latent diffusion on the config's data set (the ``latent`` section).

Usage:
    python scripts/autoencoder_train.py --config yaml/mnist/ldm_buffer_replay.yaml
    python scripts/image_train.py --config yaml/mnist/ldm_buffer_replay.yaml   # then diffusion on its latents

Trains a diffusers ``AutoencoderKL`` (``latent.block_out_channels``, ``latent_channels``,
``layers_per_block``; MSE reconstruction + ``kl_weight`` x KL, Adam at ``latent.lr`` for
``latent.steps`` steps of ``latent.batch_size``) on the train split at ``data.image_size``, sets its
``scaling_factor`` (1 / the std of the latents) and writes it to ``latent.autoencoder`` (a folder in
the diffusers layout, which Stable Diffusion's VAE also has), with ``reconstructions.png`` (test
images, and under each its reconstruction) and ``autoencoder.json`` (test reconstruction MSE and
PSNR, the training curve). Needs the ``[ldm]`` extra (diffusers). The folder existing, nothing is
retrained unless ``--force true``.
"""

import json
import os

import numpy as np
import torch

from guided_diffusion import experiment
from guided_diffusion.image_util import save_grid, to_uint8
from guided_diffusion.launch import cli
from guided_diffusion.pretrained.latent import LatentCodec, build_autoencoder, train_autoencoder
from guided_diffusion.runtime.config import ConfigError

OPTIONS = [
    (["--force"], dict(type=cli.bool_type("--force"), default=False, metavar="BOOL",
                       help="retrain even when latent.autoencoder exists (default false)")),
]
USES = ("data", "latent", "dist", "model", "diffusion", "train", "sample", "continual", "method", "evaluation",
        "text")  # an LDM preset's other sections are the diffusion's: accepted, not read


def main() -> int:
    cfg, args = cli.parse(__doc__, options=OPTIONS, uses=USES, program="autoencoder_train.py")
    if cli.maybe_dry_run(cfg, args):
        return 0
    out, lc = cfg.latent.autoencoder, cfg.latent
    if not out:
        raise ConfigError("latent.autoencoder is empty: the folder to write the autoencoder to")
    if os.path.exists(os.path.join(out, "config.json")) and not args.force:
        print(f"{out} exists; not retraining (--force true to retrain)", flush=True)
        return 0
    torch.set_num_threads(max(1, cfg.train.num_threads or torch.get_num_threads()))
    x, _, info = experiment.load_split(cfg, "train")
    xt, _, _ = experiment.load_split(cfg, "test")
    try:
        ae = build_autoencoder(lc.block_out_channels.split(","), lc.latent_channels, lc.layers_per_block,
                               info.channels, info.image_size, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from guided_diffusion.runtime.logger import progress_bar

    bar = progress_bar(total=lc.steps, desc="autoencoder")
    log = getattr(bar, "write", None) or (lambda m: print(m, flush=True))  # above the bar; in a log file too
    curve = train_autoencoder(ae, x, lc.steps, lc.batch_size, lc.lr, lc.kl_weight, seed=cfg.seed,
                              log=log, progress=bar)
    bar.close()
    tmp = out.rstrip("/") + ".partial"
    ae.save_pretrained(tmp)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    codec = LatentCodec(out)  # read back as every later run reads it
    probe = xt  # the whole test split (data sets are ordered by class: a prefix is one class)
    rec = codec.decode(codec.encode(probe))
    mse = float(torch.mean((rec - probe) ** 2))
    psnr = float(10 * np.log10(4.0 / mse))  # images span [-1, 1]: peak-to-peak 2
    n = min(16, len(probe))
    pick = np.linspace(0, len(probe) - 1, n).round().astype(int)  # spread over the split: every class
    save_grid(np.concatenate([to_uint8(probe[pick]), to_uint8(rec[pick])]), os.path.join(out, "reconstructions.png"),
              nrow=n)
    meta = {"dataset": cfg.data.dataset, "image_size": info.image_size, "channels": info.channels,
            "latent_shape": list(codec.latent_shape(info.channels, info.image_size)),
            "scaling_factor": float(ae.config.scaling_factor), "test_mse": mse, "test_psnr_db": psnr,
            "params": sum(p.numel() for p in ae.parameters()), "curve": curve}
    with open(os.path.join(out, "autoencoder.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"wrote {out}: test reconstruction MSE {mse:.5f} (PSNR {psnr:.1f} dB), scaling factor "
          f"{ae.config.scaling_factor:.4f}, {meta['params'] / 1e6:.2f}M parameters", flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
