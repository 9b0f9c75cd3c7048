"""Train a diffusion model task after task (class-incremental) with a continual method.

Usage:
    python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    mpiexec -n 2 python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    torchrun --nproc_per_node 2 scripts/continual_train.py --config yaml/mnist/naive.yaml
Override keys:  continual.num_steps=200 method.lambd=2.0 name=my_run ; --dry-run prints the config.

The YAML's ``continual`` section sets the scenario (tasks, class order, steps per task) and the
``method`` section picks the method by ``name`` (naive, joint, buffer_replay, ewc,
generative_replay, generative_distillation, ...) with its own options. Outputs go to
experiments/<name>/: task_{k}/ (checkpoints, progress.csv, samples.png with one row per seen
class), metrics.csv (a row per task). Rerunning the same command resumes: finished tasks are
skipped, the unfinished one continues from its latest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import cli, dist_util  # noqa: E402
import guided_diffusion.continual.methods  # noqa: E402,F401  (registers the methods' config schemas)
import guided_diffusion.evaluation  # noqa: E402,F401  (registers the evaluation section's schema)
from guided_diffusion.continual.loop import run_continual  # noqa: E402


def main() -> int:
    cfg, args = cli.parse(__doc__.splitlines()[0])
    if cli.maybe_dry_run(cfg, args):
        return 0
    ctx = run_continual(cfg)
    if dist_util.is_main():
        from guided_diffusion.evaluation.report import task_summary

        ctx.logger.log("\n" + task_summary(ctx.run_dir))
    ctx.logger.log(f"all tasks done: see {ctx.run_dir}/metrics.csv and task_*/samples.png; a report: "
                   f"python scripts/report.py {ctx.run_dir}")
    ctx.logger.close()
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
