"""Train a noisy classifier p(y | x_t, t) for classifier guidance (ADM's recipe).

Usage:
    python scripts/classifier_train.py --config yaml/mnist/classifier.yaml
    mpiexec -n 2 python scripts/classifier_train.py --config yaml/mnist/classifier.yaml
    torchrun --nproc_per_node 2 scripts/classifier_train.py --config yaml/mnist/classifier.yaml

The classifier is ADM's EncoderUNetModel built from the config's ``classifier`` section (width,
depth, attention_resolutions, pool, ...); it is trained with AdamW on q_sample(x, t) at t drawn by
the schedule sampler (``classifier.noised: false`` trains on clean images), for
``classifier.iterations`` steps of global batch ``classifier.batch_size``. It writes to
experiments/<name>/classifier/ (checkpoints with automatic resume, progress.csv with validation
accuracy at t=0 and at random t every ``classifier.eval_interval`` steps). Use the resulting
``model{N}.pt`` with image_sample.py --classifier_path.

ADM's ``--resume_checkpoint experiments/<name>/classifier/model{N}.pt`` (or ADM's own classifier file):
the weights, and the step, optimizer (``opt{N}.pt``) and EMA beside it when present, as ADM resumes
(runtime/adm_resume.py); weights only otherwise (the log says which). Rerunning the same command
resumes from the run folder's own checkpoints without it.
"""

import dataclasses
import os

from guided_diffusion import experiment
from guided_diffusion.classifiers.noisy import NoisyClassifierObjective, evaluate_noisy
from guided_diffusion.data import InfiniteLoader
from guided_diffusion.diffusion.resample import create_named_schedule_sampler
from guided_diffusion.launch import cli
from guided_diffusion.runtime import dist_util
from guided_diffusion.runtime.adm_resume import resume_beside
from guided_diffusion.runtime.checkpoint import load_weights
from guided_diffusion.train_util import TrainConfig
from guided_diffusion.train_util import TrainHook, TrainLoop


RESUME = (("--resume_checkpoint",), dict(default="", metavar="PATH",
                                        help="ADM's: start from this classifier's weights, with the step, optimizer "
                                             "and EMA beside it when present (opt{step}.pt, ema_{rate}_{step}.pt)"))


class EvalHook(TrainHook):
    def __init__(self, every, diffusion, x, y, logger):
        self.every, self.diffusion, self.x, self.y, self.logger = every, diffusion, x, y, logger

    def after_step(self, loop, step, terms):
        if self.every > 0 and ((step + 1) % self.every == 0 or step + 1 == loop.cfg.total_steps):
            for k, v in evaluate_noisy(loop.model, self.diffusion, self.x, self.y, seed=step).items():
                self.logger.logkv(k, v)


def main() -> int:
    cfg, args = cli.parse(__doc__, adm="classifier", program="classifier_train.py", options=[RESUME])
    if args.resume_checkpoint and not os.path.isfile(args.resume_checkpoint):
        raise FileNotFoundError(f"--resume_checkpoint {args.resume_checkpoint}: no such file")
    experiment.check_inputs(cfg)  # --dry-run runs the run's checks too
    if cli.maybe_dry_run(cfg, args):
        return 0
    with experiment.fresh_run_dir(cfg):  # a failed start leaves no run folder behind
        return train(cfg, args)


def train(cfg, args) -> int:
    c = cfg.classifier
    device = experiment.init_process(cfg)
    run_dir = os.path.join(experiment.run_dir_of(cfg), "classifier")
    logger = experiment.setup_run(cfg, run_dir=run_dir)
    x, y, info = experiment.load_split(cfg, "train")
    xv, yv, _ = experiment.load_split(cfg, "test")
    classifier = experiment.build_classifier(cfg, info)
    diffusion = experiment.build_diffusion(cfg, "")  # the noise levels: every step of the chain
    n_params = sum(p.numel() for p in classifier.parameters())
    logger.log(f"classifier {n_params / 1e6:.2f}M params on {len(x)} images, {info.num_classes} classes")
    train_cfg = dataclasses.replace(
        cfg.train, total_steps=c.iterations, batch_size=c.batch_size, microbatch=-1, lr=c.lr,
        weight_decay=c.weight_decay, lr_schedule="linear" if c.anneal_lr else "constant", warmup_steps=0,
        log_interval=c.log_interval, save_interval=c.save_interval, sample_at_end=0,
    )
    assert isinstance(train_cfg, TrainConfig)
    data = InfiniteLoader(x, y, c.batch_size, rank=dist_util.get_rank(), world_size=dist_util.get_world_size(),
                          seed=cfg.seed, random_flip=cfg.data.random_flip)
    objective = NoisyClassifierObjective(diffusion, create_named_schedule_sampler("uniform", diffusion), c.noised)
    loop = TrainLoop(model=classifier, data=data, cfg=train_cfg, run_dir=run_dir, objective=objective,
                     seed=cfg.seed, logger=logger, device=device,
                     hooks=[EvalHook(c.eval_interval, diffusion, xv[:512], yv[:512], logger)], tag="classifier")
    if args.resume_checkpoint:
        if loop.step == 0:  # the weights first (ADM: _load_and_sync_parameters), then what lies beside them
            load_weights(classifier, args.resume_checkpoint, what="classifier (--resume_checkpoint)")
            for ema in loop.ema:  # the EMA starts from the weights unless ema_{rate}_{step}.pt is beside them
                for e, p in zip(ema, loop.params):
                    e.copy_(p.detach())
        resume_beside(loop, args.resume_checkpoint, logger.log)
    loop.run()
    logger.close()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
