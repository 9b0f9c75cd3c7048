"""DKDM's claim, measured: dynamic-iterative students against the data-free baseline and the ablation.

Usage:
    python scripts/dkdm_ablation.py --config yaml/mnist/dkdm_ablation.yaml --seeds 0,1,2
    python scripts/dkdm_ablation.py --config ... --seeds 1 & python scripts/dkdm_ablation.py --config ... --seeds 2
    python scripts/dkdm_ablation.py --config ... --modes baseline,dynamic --out experiments/results/dkdm_x
    python scripts/dkdm_ablation.py --config ... --report-only

Options:
    --modes M          students to train: baseline, iterative, shuffled, dynamic (default all four)
    --seeds S          comma-separated seeds (default: the config's seed); processes running other seeds
                       may share the results folder (each adds its rows under a lock)
    --baseline_images N  the baseline's fixed teacher set (default: as many as the real training images)
    --out DIR          results.csv, README.md, grids/ (default experiments/results/<name>)
    --report-only      rebuild README.md from results.csv
Any config key: key.sub=value. --dry-run prints the resolved config.

Every student has the config's ``model`` and trains ``train.total_steps`` steps of ``train.batch_size``
from the teacher of ``dkdm.teacher_path``: ``baseline`` on a fixed set of teacher images with the plain
diffusion loss (DKDM's data-free baseline), the others from the DKDM cache in that ``dkdm.mode``. The
teacher and each student's EMA are evaluated against the real test images of ``data.dataset`` (the
``evaluation`` section), once per seed; the README gives mean ± std over the seeds and judges the two
claims by the fidelity benchmark's rule. A rerun resumes every stage. See guided_diffusion/dkdm/ablation.py.
"""

import os
import shlex
import sys

from guided_diffusion.dkdm import ablation
from guided_diffusion.dkdm import config as dkdm_config
from guided_diffusion.launch import cli
from guided_diffusion.runtime import dist_util


def main() -> int:
    options = [
        (["--modes"], dict(default=",".join(ablation.MODES), help=f"students to train (default {','.join(ablation.MODES)})")),
        (["--seeds"], dict(default="", help="comma-separated seeds (default: the config's seed)")),
        (["--baseline_images"], dict(type=int, default=0, help="the baseline's fixed teacher set (default 0: as many "
                                     "as the real training set)")),
        (["--out"], dict(default="", help="results folder (default experiments/results/<name>)")),
        (["--report-only"], dict(action="store_true", help="only rewrite the README from results.csv")),
    ]
    import guided_diffusion.evaluation.settings  # noqa: F401  (the evaluation section's schema)

    uses = (*dkdm_config.USES, "continual", "evaluation")  # the students' grids and their evaluation
    cfg, own = cli.parse(__doc__, options=options, uses=uses, program="dkdm_ablation.py")
    if cli.maybe_dry_run(cfg, own):
        return 0
    out = own.out or os.path.join("experiments", "results", cfg.name)
    modes = [m.strip() for m in own.modes.split(",") if m.strip()]
    if own.report_only:
        rows = ablation._read(os.path.join(out, "results.csv"), cfg.seed)
        if not rows:
            raise FileNotFoundError(f"no results.csv in {out}: run without --report-only first")
    else:
        try:
            seeds = [int(x) for x in own.seeds.split(",") if x.strip()] or None  # None: the config's seed
        except ValueError:
            raise ValueError(f"--seeds {own.seeds!r}: comma-separated integers expected, e.g. --seeds 0,1,2") from None
        rows = ablation.run_ablation(cfg, out, modes, own.baseline_images, seeds=seeds)
    if dist_util.is_main():
        path = ablation.write_report(cfg, out, rows, "python " + " ".join(shlex.quote(a) for a in sys.argv))
        print("\n".join(ablation.verdicts(rows)))
        print(f"wrote {path}")
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
