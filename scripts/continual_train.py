"""Train a diffusion model task after task (class-incremental) with a continual method.

The same as ``scripts/image_train.py`` with a continual config (GUIDE's habit: one training
script); kept as the explicit name. It refuses a config without a ``method``/``continual`` section.

Usage:
    python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    mpiexec -n 2 python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    torchrun --nproc_per_node 2 scripts/continual_train.py --config yaml/mnist/naive.yaml
Override keys:  continual.num_steps=200 method.lambd=2.0 name=my_run ; --dry-run prints the config.
ADM's flags work too (--num_channels 64 --lr 2e-4 --batch_size 16: per process, as in ADM).

The YAML's ``continual`` section sets the scenario (tasks, class order, steps per task) and the
``method`` section picks the method by ``name`` (naive, joint, buffer_replay, ewc,
generative_replay, generative_distillation, ...) with its own options. Outputs go to
experiments/<name>/: task_{k}/ (checkpoints, progress.csv, samples.png with one row per seen
class), metrics.csv (a row per task). Rerunning the same command resumes: finished tasks are
skipped, the unfinished one continues from its latest checkpoint.
"""

from guided_diffusion import experiment
from guided_diffusion.continual.loop import USES, is_continual, train_continual
from guided_diffusion.continual.scenario import check_scenario
from guided_diffusion.launch import cli
from guided_diffusion.runtime.config import ConfigError


def main() -> int:
    cfg, args = cli.parse(__doc__, adm="train", uses=USES, program="continual_train.py", options=[cli.FORCE])
    if not is_continual(cfg, args.given_sections):
        raise ConfigError(f"{args.config or 'the config'} has no method or continual section: it is IID training "
                          "(scripts/image_train.py)")
    experiment.check_inputs(cfg)  # --dry-run runs the run's checks too
    experiment.check_run_dir(cfg, force=args.force)
    if args.dry_run:
        check_scenario(cfg)  # what the run checks next, before its config is written
    if cli.maybe_dry_run(cfg, args):
        return 0
    with experiment.fresh_run_dir(cfg):  # a failed start leaves no run folder behind
        return train_continual(cfg)


if __name__ == "__main__":
    cli.run_main(main)
