"""Distil a student diffusion model from a teacher's DKDM dynamic cache (data-free, any architecture).

Usage (one process, CPU or one GPU):
    python scripts/dynamic_train.py --config yaml/mnist/dkdm.yaml
Several processes (train.batch_size is the global batch; each rank draws from its slice of the cache):
    mpiexec -n 2 python scripts/dynamic_train.py --config yaml/mnist/dkdm.yaml
    torchrun --nproc_per_node 2 scripts/dynamic_train.py --config yaml/mnist/dkdm.yaml
Override any config key:  dkdm.mode=shuffled name=dkdm_shuffled train.total_steps=2000 ; --dry-run
prints the resolved config.

Each step takes train.batch_size / W random cache entries per rank, restarts finished ones from
noise, advances them by one teacher step (one teacher NFE each) and trains the student (``model``)
to match the teacher's eps, plus the KL between the teacher's and the student's step when
diffusion.learn_sigma. If the cache is missing it is prepared first (as scripts/dynamic_prepare.py).
Outputs in experiments/<name>/: config.yaml, progress.csv, log.txt, checkpoints (the cache's current
state included) with EMA exports, and samples.png at the end. Rerunning the same command resumes
from the latest complete checkpoint, cache and all; SIGTERM/SIGUSR1 checkpoint and exit 0.
"""

from guided_diffusion import experiment
from guided_diffusion.dkdm import config as dkdm_config
from guided_diffusion.dkdm import pipeline
from guided_diffusion.dkdm.teacher import resolve_teacher_path
from guided_diffusion.launch import cli
from guided_diffusion.runtime import dist_util


def main() -> int:
    cfg, args = cli.parse(__doc__, adm="train", uses=dkdm_config.USES, program="dynamic_train.py")
    resolve_teacher_path(cfg.dkdm.teacher_path)  # the teacher is there (before the run folder; --dry-run too)
    experiment.check_inputs(cfg)
    if cli.maybe_dry_run(cfg, args):
        return 0
    with experiment.fresh_run_dir(cfg):  # a failed start leaves no run folder behind
        return run(cfg)


def run(cfg) -> int:
    device = experiment.init_process(cfg)
    logger = experiment.setup_run(cfg)
    loop, setup = pipeline.train(cfg, device, logger)
    pipeline.save_samples(cfg, loop, setup, device, logger)
    logger.close()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
