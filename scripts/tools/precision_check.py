"""Quality at each precision: the same continual run at ``train.precision`` fp32 and auto, over seeds.

Usage:
    python scripts/tools/precision_check.py                          # the main job, seeds 0,1,2, fp32 vs auto
    python scripts/tools/precision_check.py --seeds 0 --precisions fp32,bf16 --out experiments/precision_check
    python scripts/tools/precision_check.py --report-only

Each (precision, seed) is one run of ``scripts/image_train.py --config CONFIG seed=S train.precision=P``
in ``OUT/<precision>_s<seed>`` (a rerun resumes; finished runs are skipped). ``OUT/README.md`` then gives
the final sample accuracy and FID of each precision as mean ± std over the seeds, per task too, and
whether the precisions differ by more than the spread (the benchmark's rule,
``guided_diffusion.evaluation.seeds``), with the runs' wall times and the precision each resolved to.
Wall times are comparable only between runs on a quiet machine (the script runs one run at a time).
"""

import argparse
import csv
import os
import subprocess
import sys
import time

from guided_diffusion.evaluation.seeds import RULE, cell, compare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = (("eval_class_acc", "sample acc", True), ("eval_fid", "FID", False))


def run_dir(out, precision, seed):
    return os.path.join(out, f"{precision}_s{seed}")


def rows_of(path):
    try:
        with open(os.path.join(path, "metrics.csv")) as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def run(args, precision, seed, n_tasks):
    path = run_dir(args.out, precision, seed)
    if len(rows_of(path)) >= n_tasks:
        print(f"{path}: done", flush=True)
        return
    cmd = [sys.executable, "scripts/image_train.py", "--config", args.config, f"seed={seed}",
           f"train.precision={precision}", f"out_dir={args.out}", f"name={precision}_s{seed}", *args.overrides]
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "wall_seconds.txt"), "a") as f:  # every (re)start's share of the run
        f.write(f"{time.time() - start:.1f}\n")


def wall(path):
    try:
        with open(os.path.join(path, "wall_seconds.txt")) as f:
            return sum(float(x) for x in f.read().split())
    except OSError:
        return None


def report(args, precisions, seeds):
    runs = {(p, s): rows_of(run_dir(args.out, p, s)) for p in precisions for s in seeds}
    n_tasks = max((len(r) for r in runs.values()), default=0)
    lines = [f"# Quality at each precision: {args.config}", "",
             f"Command: `python scripts/tools/precision_check.py --config {args.config} --seeds "
             f"{','.join(map(str, seeds))} --precisions {','.join(precisions)}"
             + (" " + " ".join(args.overrides) if args.overrides else "") + "`", "",
             "| precision | resolved to | seeds | " + " | ".join(f"final {m[1]}" for m in METRICS)
             + " | wall min (one run at a time) |", "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    finals = {}
    for p in precisions:
        done = [s for s in seeds if len(runs[(p, s)]) == n_tasks and n_tasks]
        resolved = sorted({f"{runs[(p, s)][-1].get('precision', '?')} {runs[(p, s)][-1].get('memory_format', '')}"
                           f" ({runs[(p, s)][-1].get('cpu', '')})".strip() for s in done})
        finals[p] = {m: [float(runs[(p, s)][-1][m]) for s in done] for m, _, _ in METRICS}
        walls = [w / 60 for w in (wall(run_dir(args.out, p, s)) for s in done) if w is not None]
        lines.append(f"| {p} | {'; '.join(resolved)} | {len(done)} | "
                     + " | ".join(cell(finals[p][m]) for m, _, _ in METRICS) + f" | {cell(walls)} |")
    lines += ["", "Per task (mean ± std over the seeds):", "",
              "| task | " + " | ".join(f"{p} {m[1]}" for p in precisions for m in METRICS) + " |",
              "|---|" + "---|" * (len(precisions) * len(METRICS))]
    for k in range(n_tasks):
        cells = []
        for p in precisions:
            for m, _, _ in METRICS:
                cells.append(cell([float(runs[(p, s)][k][m]) for s in seeds if len(runs[(p, s)]) > k]))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if len(precisions) == 2:
        a, b = precisions
        lines += ["", f"Verdict ({RULE}):", ""]
        for m, label, higher in METRICS:
            outcome = compare(finals[b][m], finals[a][m], higher)
            text = {None: "not resolved (fewer than two seeds a side)",
                    "tie": "within the spread: the precision moves it by no more than the seeds do",
                    "better": f"{b} better than {a} by more than the spread",
                    "worse": f"{b} worse than {a} by more than the spread"}[outcome]
            lines.append(f"- final {label}: {text}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="yaml/mnist/generative_distillation.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--precisions", default="fp32,auto")
    p.add_argument("--tasks", type=int, default=5, help="tasks a finished run has (default 5)")
    p.add_argument("--out", default="experiments/precision_check")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every run")
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    precisions = args.precisions.split(",")
    if not args.report_only:
        for seed in seeds:  # seed by seed, both precisions: a partial check already pairs them
            for precision in precisions:
                run(args, precision, seed, args.tasks)
    report(args, precisions, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
