"""Train a classifier task after task with replay from a continual diffusion run (GUIDE / Masip).

Usage (after the diffusion run of the same config has finished):
    python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    python scripts/classifier_cl_train.py --config yaml/mnist/solver.yaml solver.replay=guided
    python scripts/classifier_cl_train.py --config yaml/mnist/solver.yaml solver.replay=plain
The ``solver`` section sets the classifier (arch cnn | resnet18), the replay (none, joint, plain,
soft, guided), steps, SGD learning rates, augmentation and GUIDE's guidance options
(scale_min/max, use_old_grad, use_new_grad, guid_to_new_classes). The diffusion model of task
i-1 is read from the run folder (``solver.diffusion_run``, default: this config's run folder).
Outputs go to experiments/<name>/solver_<replay>/: metrics.csv (accuracy on every seen task,
average accuracy, forgetting, replay generation cost), the classifier after each task. The
solver runs in one process (its cost is replay generation, which backpropagates through the UNet
when guided); a rerun skips finished tasks.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import cli, dist_util  # noqa: E402
import guided_diffusion.continual.methods  # noqa: E402,F401  (registers the methods' config schemas)
from guided_diffusion.continual.solver import run_solver  # noqa: E402


def main() -> int:
    cfg, args = cli.parse(__doc__, program="classifier_cl_train.py")
    if cli.maybe_dry_run(cfg, args):
        return 0
    solver = run_solver(cfg)
    last = max(solver.acc)
    print(f"final average accuracy ({cfg.solver.replay}): {sum(solver.acc[last].values()) / len(solver.acc[last]):.4f}")
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
