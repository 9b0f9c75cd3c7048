"""Write a Markdown + HTML report of continual runs: tables per method, metric-vs-task plots, samples.

Usage:
    python scripts/report.py experiments/split_mnist_generative_distillation      # one run
    python scripts/report.py experiments                                           # every run below
    python scripts/report.py experiments --out experiments/results/mnist --title "Split MNIST"

Reads only the logs of each run folder: metrics.csv (a row per finished task: cost per step,
losses, and the eval_* columns of evaluation.enabled runs), task_*/progress.csv (a task in
progress), config.yaml (the method's label) and task_*/samples.png; so it works on finished and
on partial runs. Writes report.md, report.html and report_plots/*.png (matplotlib, Agg) into the
given folder (or --out); images are linked by relative paths.
"""

import argparse

from guided_diffusion.evaluation.report import build_report
from guided_diffusion.launch import cli


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("path", help="a run folder or a folder of runs")
    p.add_argument("--out", help="where to write the report (default: path)")
    p.add_argument("--title", help="the report's title")
    args = p.parse_args()
    md, page = build_report(args.path, args.out, args.title)
    print(f"wrote {md} and {page}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
