"""Train a classifier task after task with replay from a continual diffusion run (GUIDE / Masip).

Usage (after the diffusion run of the same config has finished):
    python scripts/continual_train.py --config yaml/mnist/generative_distillation.yaml
    python scripts/classifier_cl_train.py --config yaml/mnist/solver.yaml solver.replay=guided
    python scripts/classifier_cl_train.py --config yaml/mnist/solver.yaml solver.replay=plain
The ``solver`` section sets the classifier (arch: mlp and cnn are Masip's, resnet18 GUIDE's), the replay (none, joint, plain,
soft (Masip's soft targets), soft_kd (standard distillation), guided), steps, learning rates,
augmentation, the replay sampler (``sampler``: ddim10t is Masip's trailing DDIM, ddim50 GUIDE's)
and GUIDE's guidance options (scale_min/max, use_old_grad, negate_old_grad, use_new_grad,
guid_to_new_classes, noised_classifier: a time-conditioned classifier guiding on x_t). The diffusion model of task
i-1 is read from the run folder (``solver.diffusion_run``, default: this config's run folder).
Outputs go to experiments/<name>/solver_<replay>/: metrics.csv (accuracy on every seen task,
average accuracy, forgetting, replay generation cost), the classifier after each task. The
solver runs in one process (its cost is replay generation, which backpropagates through the UNet
when guided); a rerun skips finished tasks.

GUIDE's classifier-phase flags are aliases of the solver keys (--help lists them; --dry-run prints
each flag's keys), so the classifier flags of GUIDE's README commands can be typed after a preset,
which sets what their --dataset, --num_tasks and --cl_method say:
    python scripts/classifier_cl_train.py --config yaml/guide/cifar10_5.yaml --classifier_lr=0.01
        --classifier_scale_min_new=0.5 --classifier_scale_max_new=0.5 --guid_generation_interval=5
--batch_size is GUIDE's per-process batch: the solver runs in one process, so it is the whole batch.
One scale range serves GUIDE's _old and _new flags (one gradient guides at a time): _old and _new
scales that differ are refused, as are both gradients on and --depth other than 18.
"""

import guided_diffusion.continual.methods  # noqa:F401  (registers the methods' config schemas)
from guided_diffusion.continual.solver import USES, run_solver
from guided_diffusion.launch import adm_flags, cli
from guided_diffusion.runtime import dist_util


def main() -> int:
    cfg, args = cli.parse(__doc__, adm="guide_classifier", uses=USES, program="classifier_cl_train.py")
    adm_flags.check_guide_flags(cfg, args.translations)
    if cli.maybe_dry_run(cfg, args):
        return 0
    solver = run_solver(cfg)
    last = max(solver.acc)
    print(f"final average accuracy ({cfg.solver.replay}): {sum(solver.acc[last].values()) / len(solver.acc[last]):.4f}")
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
