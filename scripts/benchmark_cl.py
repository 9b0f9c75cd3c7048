"""Fidelity benchmark: every continual method on one scenario, same model, steps, seeds and
evaluation, then one comparison report with the papers' claims checked.

Usage:
    python scripts/benchmark_cl.py --suite yaml/bench/split_mnist.yaml --jobs 2   # CPU, 3 seeds: hours; resumes
    python scripts/benchmark_cl.py --suite yaml/bench/split_mnist.yaml --seeds 0     # one seed (claims: not resolved)
    python scripts/benchmark_cl.py --suite yaml/bench/split_mnist.yaml --scale paper   # split Fashion-MNIST
                                                                                      # at the papers' sizes (GPU)
    python scripts/benchmark_cl.py --suite ... --report-only     # rebuild the report from the logs
    python scripts/benchmark_cl.py --suite ... --plan            # print the runs and their configs, run nothing
    python scripts/benchmark_cl.py --suite ... --jobs 2          # two runs at once (CPUs shared)
    python scripts/benchmark_cl.py --suite ... --launcher "mpiexec -n 2"   # each diffusion run on 2 ranks

The suite file (its format: scripts/tools/bench/suite.py) names a base config, the settings shared by
every run, the methods (label -> method section), the seeds, the solver runs and the claims to check
(scripts/tools/bench/claims.py). Every run's config is written to <out_dir>/configs/ and validated
before anything runs. Rerun the same command to resume after an interruption: finished runs are
skipped, an interrupted one resumes from its checkpoints. Each finished run's results are also copied
to the suite's archive (``archive_dir``, default ``<report_dir>/runs``: metrics, configs, grids; small,
committed), so a suite that takes longer than one machine's life resumes on the next one: commit the
archive as runs finish. The report goes to the suite's report_dir: README.md (headline tables, claims, the
exact command, commit and machine), report.md/.html (per-run tables, plots, every sample grid).
"""

import argparse
import shlex
import sys
import time

from tools.bench.plan import plan_runs
from tools.bench.report import write_report
from tools.bench.run import SuiteRunError, run_suite
from tools.bench.suite import load_suite

from guided_diffusion.launch import cli


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--suite", required=True, help="suite YAML (yaml/bench/...)")
    p.add_argument("--scale", default="", help="one of the suite's scales (e.g. paper)")
    p.add_argument("--seeds", default="", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--only", default="", help="comma-separated labels to run (the others are only reported)")
    p.add_argument("--launcher", default="", help='prefix of each diffusion run, e.g. "mpiexec -n 2"')
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each once what it needs has finished, with the CPUs shared among them")
    p.add_argument("--plan", action="store_true", help="write and check the configs, print the runs, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the run folders")
    args = p.parse_args()
    cli._register_section_schemas()
    suite = load_suite(args.suite, args.scale)
    if args.seeds:
        suite.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    specs = plan_runs(suite)
    if args.plan:
        for s in specs:
            print(f"{s.kind:10s} {s.label:22s} seed {s.seed}: {s.config_path} {' '.join(s.overrides)} -> {s.run_dir}")
        return 0
    wall = None
    if not args.report_only:
        start = time.time()
        try:
            run_suite(suite, specs, shlex.split(args.launcher), only=[x for x in args.only.split(",") if x] or None,
                      jobs=args.jobs)
        except SuiteRunError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        wall = time.time() - start
    command_line = "python scripts/benchmark_cl.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = write_report(suite, specs, command_line, wall)
    print(f"wrote {path}", flush=True)
    with open(path) as f:
        text = f.read()
    head = text.split("## Details")[0]
    print(head, flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
