"""Learning curve of a config: IID training on a class subset, evaluated as the images seen grow.

Usage:
    python scripts/learning_curve.py --config yaml/mnist/iid.yaml --classes 0,1 --points 4k,8k,16k,32k
    python scripts/learning_curve.py --config yaml/mnist/iid.yaml --classes all --points 8k:128k   # doublings
    python scripts/learning_curve.py --plot experiments/curves/a experiments/curves/b --out docs/curves.png

Options:
    --classes C       classes to train on: "0,1", "all" (default all)
    --points P        images seen at which to evaluate: a list ("4k,8k,20000") or "A:B" (A, 2A, 4A, ... <= B)
    --num_samples N   samples per evaluation (default 500; evaluation.num_samples)
    --out DIR         the run folder (default experiments/curves/<name>_<classes>); with --plot: the PNG
    --label TEXT      the run's name in plots and tables (default: the folder name)
    --plot DIR ...    draw the curves of finished (or partial) runs on one figure and print their table
Any config key: key.sub=value (e.g. train.lr=2e-3 train.batch_size=64). --dry-run prints the config.

At every point the EMA weights are evaluated with the config's ``evaluation`` section (default: the
domain classifier's FID against the real test images of the classes, the floor of as many real
training images, the classifier's accuracy on class-conditional samples) and a grid is drawn with
``continual.eval_sampler``. Writes <out>/curve.csv (a row per point: images, steps, training
seconds, seconds per image, FID, floor, class accuracy, ...), curve.png, grid_<images>.png, and
prints the plateau: the first point whose doubling improves FID by less than 10%. A rerun resumes.
"""

import dataclasses
import os

from tools import curves as lc

from guided_diffusion.evaluation.settings import evaluation_of
from guided_diffusion.launch import cli
from guided_diffusion.runtime.config import ConfigError

OPTIONS = [
    (["--classes"], dict(default="all", help="class subset: 0,1 or all (default all)")),
    (["--points"], dict(default="4k:64k", help="images seen at each evaluation: 4k,8k,16k or 4k:64k (doublings); "
                        "default 4k:64k")),
    (["--num_samples"], dict(type=int, default=500, help="samples per evaluation (default 500; sets "
                             "evaluation.num_samples)")),
    (["--out"], dict(default="", help="run folder (default experiments/curves/<name>)")),
    (["--label"], dict(default="", help="the curve's name in plots (default: the run folder's)")),
    (["--plot"], dict(nargs="+", default=None, metavar="RUN", help="only draw these runs' curves into --out")),
    (["--title"], dict(default="", help="the plot's title")),
]


def _points(text: str):
    if ":" in text:
        a, b = text.split(":", 1)
        lo, hi = lc.parse_points(a)[0], lc.parse_points(b)[0]
        return lc.doubling_points(lo, hi)
    return lc.parse_points(text)


def main() -> int:
    cfg, own = cli.parse(__doc__, adm="train", options=OPTIONS, program="learning_curve.py")
    if own.plot:
        missing = [d for d in own.plot if not os.path.isfile(os.path.join(d, "curve.csv"))]
        if missing:
            raise FileNotFoundError(f"no curve.csv in {', '.join(missing)}")
        out = own.out or os.path.join(own.plot[0], "curves.png")
        lc.plot_curves(own.plot, out, title=own.title)
        print(lc.curve_table(own.plot), end="")
        print(f"wrote {out}")
        return 0
    # --num_samples sets the evaluation's sample count (its checks rerun on the replaced section).
    cfg.evaluation = dataclasses.replace(evaluation_of(cfg), num_samples=own.num_samples)
    if cli.maybe_dry_run(cfg, own):
        return 0
    from guided_diffusion import experiment

    info = experiment.dataset_info(cfg)
    if own.classes.strip().lower() == "all":
        classes = list(range(info.num_classes))
        tag = "all"
    else:
        try:
            classes = sorted({int(c) for c in own.classes.split(",") if c.strip()})
        except ValueError:
            raise ConfigError(f"--classes {own.classes!r}: expected 'all' or a list like 0,1") from None
        bad = [c for c in classes if not 0 <= c < info.num_classes]
        if bad or not classes:
            raise ConfigError(f"--classes {own.classes!r}: {cfg.data.dataset} has classes 0..{info.num_classes - 1}")
        tag = "c" + "".join(map(str, classes)) if len(classes) <= 10 else f"{len(classes)}classes"
    points = _points(own.points)
    run_dir = own.out or os.path.join(cfg.out_dir, "curves", f"{cfg.name}_{tag}")
    os.makedirs(run_dir, exist_ok=True)
    if own.label:
        with open(os.path.join(run_dir, "label.txt"), "w") as f:
            f.write(own.label + "\n")
    rows = lc.run_curve(cfg, classes, points, run_dir)
    print(lc.curve_table([run_dir]), end="")
    print(f"wrote {run_dir}/curve.csv and curve.png ({len(rows)} points)")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
