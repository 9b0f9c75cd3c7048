"""MAS's importance in this project's form against CLoG's, on one network: how strong CLoG's weight is here.

This project's ``mas_importance`` is the MAS paper's (the squared L2 norm of the whole output, one image
at a time, averaged over the images); CLoG (linhaowei1/CLoG ``networks/diffusion/ddim.py``) sums the
non-squared L2 norm of each output row over a whole batch, divides the accumulated |grad| by the number
of batches, and halves the penalty. Both on the same network, images, t and noise:

    python scripts/tools/mas_scale.py experiments/bench_split_mnist/mas_s0 --task 0 --images 64

prints the mean importance of each form and the ratio of the penalties at equal weight.
"""

import argparse
import csv
import glob
import os
import sys

import torch

from guided_diffusion import experiment as E
from guided_diffusion.continual.regularizers import diffusion_outputs, mas_importance
from guided_diffusion.runtime.config import load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a continual run folder (its config.yaml and task_<k>/model*.pt)")
    p.add_argument("--task", type=int, default=0, help="the task whose raw weights and classes are used")
    p.add_argument("--images", type=int, default=64, help="images of the task (CLoG's form: one batch of them)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(os.path.join(args.run_dir, "config.yaml"))
    info = E.model_info(cfg, E.dataset_info(cfg))
    model = E.build_model(cfg, info)
    weights = sorted(glob.glob(os.path.join(args.run_dir, f"task_{args.task}", "model*.pt")))
    if not weights:
        sys.exit(f"error: no task_{args.task}/model*.pt in {args.run_dir}")
    model.load_state_dict(torch.load(weights[-1], map_location="cpu", weights_only=False))
    diffusion = E.build_diffusion(cfg)
    with open(os.path.join(args.run_dir, "metrics.csv")) as f:  # the task's classes, as the run recorded them
        row = next(r for r in csv.DictReader(f) if int(r["task"]) == args.task)
    x, y = E.load_split(cfg, "train", classes=[int(c) for c in row["classes"].split()])[:2]
    x, y = x[: args.images], y[: args.images]
    params = [q for q in model.parameters() if q.requires_grad]
    ours = mas_importance(params, diffusion_outputs(model, diffusion, x, y, seed=args.seed, batch_size=1))
    model.eval()
    clog = [torch.zeros_like(q) for q in params]
    outs = list(diffusion_outputs(model, diffusion, x, y, seed=args.seed, batch_size=len(x)))
    for out in outs:
        grads = torch.autograd.grad(out.norm(2, dim=-1).sum(), params, allow_unused=True)
        for c, g in zip(clog, grads):
            if g is not None:
                c.add_(g.abs() / len(outs))
    flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
    a, c = flat(ours), flat(clog)
    print(f"{weights[-1]}: {len(x)} images of task {args.task}")
    print(f"mean importance: this project's {a.mean().item():.4g}, CLoG's {c.mean().item():.4g}")
    print(f"CLoG's penalty over this project's at equal weight (its 1/2 included): {(c.sum() / (2 * a.sum())).item():.3g}")


if __name__ == "__main__":
    main()
