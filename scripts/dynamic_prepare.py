"""Prepare a DKDM dynamic cache: teacher trajectories from noise, each stopped at a random step.

Usage (one process, CPU or one GPU):
    python scripts/dynamic_prepare.py --config yaml/mnist/dkdm.yaml
Several processes (each prepares every W-th shard; the cache does not depend on W):
    mpiexec -n 2 python scripts/dynamic_prepare.py --config yaml/mnist/dkdm.yaml
    torchrun --nproc_per_node 2 scripts/dynamic_prepare.py --config yaml/mnist/dkdm.yaml
Override any config key:  dkdm.rho=0.2 dkdm.prepare_batch=512 ; --dry-run prints the resolved config.

The teacher is dkdm.teacher_path (weights, or a run folder of scripts/image_train.py: its newest EMA
export). The cache holds round(dkdm.rho * T) * train.batch_size entries (mode dynamic; one batch for
shuffled / iterative), written to dkdm.cache_dir (default experiments/<name>/cache/) as safetensors
shards plus cache.json (teacher path and sha256, T, rho, seed, shards' sha256). A progress bar shows
teacher NFEs/s. Rerunning the same command after a kill continues with the missing shards; a
complete cache is reused. Then train the student: scripts/dynamic_train.py --config <same file>.
"""

from guided_diffusion import experiment
from guided_diffusion.dkdm import config as dkdm_config
from guided_diffusion.dkdm import pipeline
from guided_diffusion.dkdm.teacher import resolve_teacher_path
from guided_diffusion.launch import cli
from guided_diffusion.runtime import dist_util


def main() -> int:
    cfg, args = cli.parse(__doc__, uses=dkdm_config.USES, program="dynamic_prepare.py")
    resolve_teacher_path(cfg.dkdm.teacher_path)  # the teacher is there (before the run folder; --dry-run too)
    experiment.check_inputs(cfg)
    if cli.maybe_dry_run(cfg, args):
        return 0
    with experiment.fresh_run_dir(cfg):  # a failed start leaves no run folder behind
        return run(cfg)


def run(cfg) -> int:
    device = experiment.init_process(cfg)
    logger = experiment.setup_run(cfg, config_name="prepare_config.yaml")
    pipeline.prepare(cfg, device, logger)
    logger.close()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
