"""DKDM's claim, measured: dynamic-iterative students against the data-free baseline and the ablation.

Usage:
    python scripts/dkdm_ablation.py --config yaml/mnist/dkdm_ablation.yaml
    python scripts/dkdm_ablation.py --config ... --modes baseline,dynamic --out experiments/results/dkdm_x
    python scripts/dkdm_ablation.py --config ... --report-only

Options:
    --modes M          students to train: baseline, iterative, shuffled, dynamic (default all four)
    --baseline_images N  the baseline's fixed teacher set (default: as many as the real training images)
    --out DIR          results.csv, README.md, grids/ (default experiments/results/<name>)
    --report-only      rebuild README.md from results.csv
Any config key: key.sub=value. --dry-run prints the resolved config.

Every student has the config's ``model`` and trains ``train.total_steps`` steps of ``train.batch_size``
from the teacher of ``dkdm.teacher_path``: ``baseline`` on a fixed set of teacher images with the plain
diffusion loss (DKDM's data-free baseline), the others from the DKDM cache in that ``dkdm.mode``. The
teacher and each student's EMA are evaluated against the real test images of ``data.dataset`` (the
``evaluation`` section). A rerun resumes every stage. See guided_diffusion/dkdm/ablation.py.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import cli, dist_util  # noqa: E402
from guided_diffusion.dkdm import ablation, config as dkdm_config  # noqa: E402


def main() -> int:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return 0
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--modes", default=",".join(ablation.MODES))
    p.add_argument("--baseline_images", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--report-only", action="store_true")
    own, rest = p.parse_known_args(sys.argv[1:])
    import guided_diffusion.evaluation.settings  # noqa: F401  (the evaluation section's schema)

    cfg, args = cli.parse(__doc__.splitlines()[0], rest)
    dkdm_config.check(cfg)
    if cli.maybe_dry_run(cfg, args):
        return 0
    out = own.out or os.path.join("experiments", "results", cfg.name)
    modes = [m.strip() for m in own.modes.split(",") if m.strip()]
    if own.report_only:
        rows = ablation._read(os.path.join(out, "results.csv"))
        if not rows:
            raise FileNotFoundError(f"no results.csv in {out}: run without --report-only first")
    else:
        rows = ablation.run_ablation(cfg, out, modes, own.baseline_images)
    if dist_util.is_main():
        path = ablation.write_report(cfg, out, rows, "python " + " ".join(shlex.quote(a) for a in sys.argv))
        print("\n".join(ablation.verdicts(rows)))
        print(f"wrote {path}")
    dist_util.cleanup()
    return 0


if __name__ == "__main__":
    cli.run_main(main)
