"""Does a solver's classifier tell replayed images from real ones? A check for generative replay's shortcut.

Usage:
    python scripts/tools/replay_check.py --solver RUN/solver_plain --task 2 --images 200

In generative replay every real image of a batch is of a new class and every generated one of an old
class, so a classifier that can tell generated from real images can fit the replay without learning
the old classes. For the solver run ``--solver`` (a ``solver_*`` folder of ``scripts/classifier_cl_train.py``)
and its classifier after ``--task`` k (``classifier_task_k.pt``), this prints:

- its accuracy on the real test images of the old classes (those before task k), with the histogram of
  the classes it predicts for them;
- its accuracy on ``--images`` replay images of the same classes, generated as plain replay generates
  them (the diffusion model after task k-1, the run's ``solver.sampler``, unguided whatever the run's
  replay, labels uniform over the old classes, seeded by ``--seed``);
- how black the backgrounds are: of the pixels below -0.8 (of [-1, 1]), the mean distance to -1 and the
  share exactly at -1, for the real test images and the replay (MNIST's backgrounds are exactly black;
  a generator's are grainy).

A classifier right on the replay and wrong on the real images of the same classes has learned the
shortcut. Bad input (a folder that is not a solver run, a task it has not finished or that has no old
classes) exits with one line and code 2.
"""

import argparse
import os
import sys

import numpy as np
import torch

from guided_diffusion import experiment
from guided_diffusion.runtime.config import ConfigError, load_config


def background(x: torch.Tensor) -> tuple:
    """(mean |x + 1|, share exactly -1) over the pixels below -0.8: how black the background is."""
    x = x.float()
    bg = x[x < -0.8]
    return float((bg + 1).abs().mean()), float((bg == -1).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solver", required=True, help="a solver run folder (RUN/solver_<replay>)")
    p.add_argument("--task", type=int, required=True, help="the classifier after this task (>= 1)")
    p.add_argument("--images", type=int, default=200, help="replay images to generate")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg_path = os.path.join(a.solver, "config.yaml")
    done = os.path.join(a.solver, f"task_{a.task}.done.json")  # the solver's mark of a finished task
    if not os.path.isfile(cfg_path):
        print(f"error: {a.solver} has no config.yaml: give a solver run folder (RUN/solver_<replay>)", file=sys.stderr)
        return 2
    if a.task < 1 or not os.path.isfile(done):
        print(f"error: {done} does not exist: give a task >= 1 that the solver run has finished", file=sys.stderr)
        return 2
    import guided_diffusion.continual.methods  # noqa: F401  (the method section's schemas)
    import guided_diffusion.evaluation.settings  # noqa: F401
    from guided_diffusion.continual.scenario import build_scenario
    from guided_diffusion.continual.solver.learner import Solver

    try:  # the replay is generated as plain replay does, whatever the run's (no guidance, no noised classifier)
        cfg = load_config(cfg_path, ["solver.replay=plain", "solver.guided.noised_classifier=false"], record=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, cfg.train.num_threads or 1))
    x, y, info = experiment.load_split(cfg, "train")
    xt, yt, _ = experiment.load_split(cfg, "test")
    scenario = build_scenario(cfg.continual, info.num_classes, info.task_classes)
    if a.task >= len(scenario.tasks):
        print(f"error: task {a.task}: the scenario has tasks 0..{len(scenario.tasks) - 1}", file=sys.stderr)
        return 2

    class Quiet:  # the solver's logger, unused here
        def __getattr__(self, _):
            return lambda *args, **kw: None

    solver = Solver(cfg, x, y, xt, yt, info, scenario, torch.device("cpu"), a.solver, Quiet())
    task = scenario.tasks[a.task]
    old = list(task.old_classes)
    model = solver.diffusion_after(a.task - 1)
    diffusion = experiment.build_diffusion(cfg, cfg.solver.sampler)
    xg, yg = solver.generate(model, diffusion, task, a.images, torch.Generator().manual_seed(a.seed), None)
    solver.restore(task)  # the classifier after task k, as the run saved it
    solver.clf.eval()
    m = torch.as_tensor(np.isin(yt.numpy(), old))
    with torch.no_grad():
        pred_real = solver.clf(xt[m]).argmax(-1)
        pred_gen = solver.clf(xg.float()).argmax(-1)
    print(f"{a.solver}: the classifier after task {a.task}; old classes {old}, new {list(task.classes)}")
    print(f"  real test images of the old classes ({int(m.sum())}): accuracy {(pred_real == yt[m]).float().mean():.3f}; "
          f"predicted classes {np.bincount(pred_real.numpy(), minlength=info.num_classes).tolist()}")
    print(f"  replay images of the old classes ({a.images}, sampler {cfg.solver.sampler!r}, seed {a.seed}): accuracy "
          f"{(pred_gen == yg).float().mean():.3f}; predicted classes "
          f"{np.bincount(pred_gen.numpy(), minlength=info.num_classes).tolist()}")
    for name, imgs in (("real test images", xt[m]), ("replay images", xg)):
        dist, black = background(imgs)
        print(f"  background of the {name}: mean |x+1| {dist:.4f}, exactly black {black:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
