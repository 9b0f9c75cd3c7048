"""Fault injection: kill tiny 3-task continual runs at many points, rerun them, compare bit for bit.

Usage:
    OMP_NUM_THREADS=1 python scripts/fault_injection.py                    # the full matrix (~30 min on 2 cores)
    python scripts/fault_injection.py --cases gd_eval --launchers 1 --per-point 1 --random-kills 1 --chains 0
    python scripts/fault_injection.py --faults "evaluation:2,replay_generation:3"   # chosen points only

For every case (``gd_eval``: generative distillation with replay generated at every step and the
per-task evaluation; ``dynamic_cache``: distillation from a DKDM cache prepared in shards before
tasks 1 and 2) and every launcher (``1``: one process; ``mpiexec2``: ``mpiexec -n 2``, gloo), the
script makes one uninterrupted run, which records every fault point it reaches
(``GDCL_FAULT_TRACE``), then draws kill points from that trace (``fault_matrix.plan``): each point
(``train_step``, ``replay_generation``, ``evaluation``, ``cache_prepare``, ``checkpoint_write``,
``atomic_write``, ``task_end``) at random occurrences and ranks, SIGKILLs of the whole process group
at random times, and chains of three kills in a row. Each faulty run is SIGKILLed there
(``GDCL_FAULT``), the same command is run again until it exits 0, and the run folder is compared
with the uninterrupted one: every tensor of every task's final checkpoint and method state, and
every non-timing cell of metrics.csv (``fault_matrix.compare_runs``).

Prints one line per chain and the summary "N kill points tried, N runs killed, N runs resumed,
N mismatches, N failed reruns"; exits 1 when a rerun failed or a run differs. ``--work`` keeps the
run folders (default: a fresh temporary folder, removed at the end unless --keep). The runs use a
copy of the code (guided_diffusion/, scripts/, yaml/ in <work>/src, with the commit and any local
changes noted), so that editing the working tree meanwhile cannot mix two versions in one comparison.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tools import fault_matrix as fm


def snapshot_code(work: str) -> str:
    """Copy the code the runs execute into ``<work>/src``; returns a line naming its version."""
    src = os.path.join(work, "src")
    if not os.path.exists(src):
        for name in ("guided_diffusion", "scripts", "yaml"):
            shutil.copytree(os.path.join(fm.ROOT, name), os.path.join(src, name),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    def git(*args):
        p = subprocess.run(["git", *args], cwd=fm.ROOT, capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else "?"

    changed = [ln[3:] for ln in git("status", "--porcelain", "--", "guided_diffusion", "scripts", "yaml").splitlines()
               if len(ln) > 3]
    return f"code: commit {git('rev-parse', '--short', 'HEAD').strip()}" + (
        f" + local changes in {', '.join(changed)}" if changed else "") + f" (copied to {src})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(fm.MATRIX_CASES), help=f"comma-separated, of {', '.join(fm.CASES)}")
    p.add_argument("--launchers", default=",".join(fm.LAUNCHERS), help=f"comma-separated, of {', '.join(fm.LAUNCHERS)}")
    p.add_argument("--faults", default="", help="these GDCL_FAULT specs (comma-separated; '+' chains kills) "
                                                 "instead of a plan drawn from the trace")
    p.add_argument("--per-point", type=int, default=1, help="kills per fault point kind (atomic_write: twice as many)")
    p.add_argument("--random-kills", type=int, default=2, help="SIGKILLs at random times per case and launcher")
    p.add_argument("--chains", type=int, default=1, help="chains of three kills in a row per case and launcher")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn kill points")
    p.add_argument("--work", default="", help="folder for the runs (kept); default: a temporary one")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--no-snapshot", action="store_true", help="run the working tree itself, not a copy of it")
    args = p.parse_args()

    cases = [c for c in args.cases.split(",") if c]
    launchers = [x for x in args.launchers.split(",") if x]
    for c in cases:
        if c not in fm.CASES:
            p.error(f"unknown case {c!r}; valid: {', '.join(fm.CASES)}")
    for x in launchers:
        if x not in fm.LAUNCHERS:
            p.error(f"unknown launcher {x!r}; valid: {', '.join(fm.LAUNCHERS)}")
        if fm.LAUNCHERS[x] and shutil.which(fm.LAUNCHERS[x][0]) is None:
            p.error(f"launcher {x}: {fm.LAUNCHERS[x][0]} is not installed (pip install -e .[mpi])")
    work = args.work or tempfile.mkdtemp(prefix="gdcl-faults-")
    os.makedirs(work, exist_ok=True)
    print(f"fault injection in {work}: cases {', '.join(cases)}; launchers {', '.join(launchers)}", flush=True)
    if not args.no_snapshot:
        print(snapshot_code(work), flush=True)
        fm.ROOT = os.path.join(work, "src")
    start = time.time()
    outcomes = []
    try:
        for case_name in cases:
            case = fm.CASES[case_name]
            for launcher in launchers:
                t0 = time.time()
                ref = fm.reference(case, work, launcher)
                trace, seconds = fm.reference_trace(case, work, launcher)
                points = sorted({name for name, _, _ in trace})
                print(f"{case_name} [{launcher}]: uninterrupted run {seconds:.0f}s, {len(trace)} fault points reached "
                      f"({', '.join(points)}) [{time.time() - t0:.0f}s with setup]", flush=True)
                if args.faults:
                    chains = [c.split("+") for c in args.faults.split(",") if c]
                else:
                    chains = fm.plan(case, work, launcher, seed=args.seed, per_point=args.per_point,
                                     random_kills=args.random_kills, chains=args.chains)
                for chain in chains:
                    o = fm.inject(case, chain, work, launcher, ref_dir=ref)
                    outcomes.append(o)
                    print("  " + o.line(), flush=True)
                    for m in o.mismatches[:5]:
                        print(f"      mismatch: {m}", flush=True)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(fm.summary(outcomes).splitlines()[-1] + f" ({time.time() - start:.0f}s)", flush=True)
    return 0 if outcomes and all(o.finished and not o.mismatches for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
