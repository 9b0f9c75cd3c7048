"""Train a diffusion model: IID training on one data set, or a continual run task after task.

One entry point, as GUIDE's: a config with a ``method`` or ``continual`` section runs the continual
loop (the same as scripts/continual_train.py), any other config trains one model on the data set.

Usage (one process, CPU or one GPU):
    python scripts/image_train.py --config yaml/mnist/iid.yaml
    python scripts/image_train.py --config yaml/mnist/generative_distillation.yaml     # continual
Several processes on one machine (gloo on CPU, NCCL on GPUs):
    mpiexec -n 2 python scripts/image_train.py --config yaml/mnist/iid.yaml
    torchrun --nproc_per_node 2 scripts/image_train.py --config yaml/mnist/iid.yaml
Override any config key:  train.total_steps=2000 model.num_channels=64 name=my_run
ADM's flags:  --num_channels 128 --num_res_blocks 3 --lr 1e-4 --batch_size 32 (per process, as ADM's)
    --resume_checkpoint P/model{N}.pt (ADM's resume: the weights, and the step, optimizer and EMA from
    opt{N}.pt and ema_{rate}_{N}.pt beside them when present)   (the list: --help; what they set: --dry-run)
    --data_dir DIR (ADM's: the folder is the data set, class from the file name, cat_0.png -> 'cat')
GUIDE's flags:  --num_tasks 5 --num_steps N --first_task_num_steps N --dataset CIFAR10 (continual keys)
A run folder holds one run: another method or setting under the same name is refused (name=<new>, or --force).
Print the resolved config: --dry-run

An IID run writes to experiments/<name>/: config.yaml, progress.csv/.jsonl, log.txt, checkpoints
(model/ema/opt/state + a manifest per step, EMA weights also as .safetensors + .json) and, at the
end, samples.png. A continual run: task_{k}/ folders and metrics.csv (see continual_train.py).
Rerunning the same command resumes from the latest complete checkpoint; SIGTERM or SIGUSR1 writes
a checkpoint at the next step and exits 0.
"""

import os

from guided_diffusion import experiment
from guided_diffusion.continual.loop import USES, is_continual, train_continual
from guided_diffusion.continual.scenario import check_scenario
from guided_diffusion.data import InfiniteLoader
from guided_diffusion.diffusion.respace import sampler_label
from guided_diffusion.image_util import save_grid
from guided_diffusion.launch import cli
from guided_diffusion.runtime import dist_util
from guided_diffusion.runtime.adm_resume import resume_beside
from guided_diffusion.sampling.sample_sets import sample_set
from guided_diffusion.train_util import TrainLoop

IID_USES = ("data", "model", "diffusion", "train", "sample", "dist", "text", "vae", "latent")


def main() -> int:
    cfg, args = cli.parse(__doc__, adm="train", program="image_train.py", options=[cli.FORCE],
                          uses=lambda cfg, given: USES if is_continual(cfg, given) else IID_USES)
    experiment.check_inputs(cfg)  # --dry-run runs the run's checks too
    experiment.check_run_dir(cfg, force=args.force)
    if args.dry_run and is_continual(cfg, args.given_sections):
        check_scenario(cfg)  # what the run checks next, before its config is written
    if cli.maybe_dry_run(cfg, args):
        return 0
    with experiment.fresh_run_dir(cfg):  # a failed start leaves no run folder behind
        if is_continual(cfg, args.given_sections):
            if any(flag.startswith("--resume_checkpoint") for flag, _ in args.translations) and dist_util.is_main():
                print(f"note: --resume_checkpoint in a continual run: task 0 starts from the weights of "
                      f"{cfg.model.init_path} only (a continual run resumes by rerunning its command)", flush=True)
            return train_continual(cfg)
        return train_iid(cfg, adm_resume=any(flag.startswith("--resume_checkpoint") for flag, _ in args.translations))


def train_iid(cfg, adm_resume: bool = False) -> int:
    device = experiment.init_process(cfg)
    run_dir = experiment.run_dir_of(cfg)
    logger = experiment.setup_run(cfg)
    x, y, info = experiment.load_split(cfg, "train")
    x, info = experiment.to_model_space(cfg, x, info)  # latent diffusion: the autoencoder's latents
    model = experiment.build_model(cfg, info)
    experiment.init_weights(cfg, model, logger.log)
    diffusion = experiment.build_diffusion(cfg)
    logger.log(experiment.describe(cfg, info, model, len(x)))
    data = InfiniteLoader(x, y, cfg.train.batch_size, rank=dist_util.get_rank(),
                          world_size=dist_util.get_world_size(), seed=cfg.seed,
                          random_flip=cfg.data.random_flip)
    objective = experiment.build_objective(cfg, diffusion, info.num_classes)
    loop = TrainLoop(model=model, data=data, cfg=cfg.train, run_dir=run_dir, objective=objective, seed=cfg.seed,
                     logger=logger, device=device, export_config=experiment.export_config(cfg, info),
                     precision=experiment.precision_of(cfg, device))
    if adm_resume:  # ADM's --resume_checkpoint: the step, optimizer and EMA beside the weights too
        resume_beside(loop, cfg.model.init_path, logger.log)
    loop.run()
    if cfg.train.sample_at_end > 0:
        # Sample with the EMA weights of the first rate, with the sampling section's sampler.
        ema = loop.ema_state_dicts()[loop.ema_rates[0]]
        model.load_state_dict(ema)
        images, labels = sample_set(model, experiment.sample_spec(cfg, info, device),
                                    num_samples=cfg.train.sample_at_end, batch_size=cfg.sample.batch_size,
                                    seed=cfg.seed, classes=range(info.num_classes), log=logger.log,
                                    desc="end-of-run samples")
        if dist_util.is_main():
            path = os.path.join(run_dir, "samples.png")
            save_grid(images, path)
            logger.log(f"wrote {path} ({len(images)} samples, EMA {loop.ema_rates[0]}, "
                       f"{sampler_label(cfg.sample.sampler, cfg.sample.eta)})")
    logger.close()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
