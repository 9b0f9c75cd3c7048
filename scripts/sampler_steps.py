"""FID against the number of sampling steps, per sampler, for one trained model (docs/performance.md's table).

Usage:
    python scripts/sampler_steps.py --config experiments/curves/f16_all/config.yaml \
        --model_path experiments/curves/f16_all/ema_0.999_004000.safetensors \
        --out experiments/results/sampler_steps_f16 [--samplers ddim,ancestral,dpmpp_2m,unipc] \
        [--steps 5,10,15,25,50] [--spacings trailing,logsnr] [--reference ddim50] [--seeds 0,1,2]

Every (sampler, spacing, steps) point is one evaluation of the config's evaluation section
(``evaluation.num_samples`` class-conditional samples with labels in the reference's proportions,
domain FID, class accuracy, ...) with the sampler given as its value (``dpmpp_2m10l``, ``ddim10t``,
``20t``: ``evaluation.sampler``). ``--reference`` adds one point with a value as typed (default ``ddim50``: ADM's DDIM-50,
the figure the few-step solvers are measured against). Writes ``steps.csv`` (one row per point,
with its evaluation seed and seconds per image), ``steps.png`` (FID vs steps, mean ± sd over the
seeds) and ``steps.md`` (the table); a rerun skips the points already in ``steps.csv``, so a cut run
resumes and more seeds can be added later.
"""

import csv
import os
import statistics
import sys
import time

from guided_diffusion import experiment
from guided_diffusion.diffusion.respace import respacing_spec
from guided_diffusion.launch import cli
from guided_diffusion.runtime.checkpoint import load_checked, load_state_dict_file
from guided_diffusion.runtime.config import ConfigError
from guided_diffusion.runtime.logger import read_csv
from guided_diffusion.sampling.config import sampler_kind
from guided_diffusion.sampling.samplers import SAMPLERS, SOLVERS

SPACINGS = ("trailing", "logsnr")
COLUMNS = ["spec", "seed", "sampler", "spacing", "steps", "eval_fid", "eval_class_acc", "eval_precision",
           "eval_recall", "eval_fid_real", "sec_per_image", "eval_samples"]


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def write_rows(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _stat(rows, key):
    """(mean, sd over seeds, n) of ``key``."""
    v = [float(r[key]) for r in rows]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def curves(rows, reference_spec):
    """{(sampler, spacing): {steps: rows over seeds}} of the points other than the reference."""
    out = {}
    for r in rows:
        if r["spec"] != reference_spec:
            out.setdefault((r["sampler"], r["spacing"]), {}).setdefault(int(r["steps"]), []).append(r)
    return out


def _cell(rs):
    m, sd, n = _stat(rs, "eval_fid")
    acc = _stat(rs, "eval_class_acc")[0]
    return f"{m:.1f} ± {sd:.1f} ({acc:.2f})" if n > 1 else f"{m:.1f} ({acc:.2f})"


def table(rows, reference_spec):
    """Markdown: one row per (sampler, spacing), one column per step count: FID mean ± sd over the
    seeds (class accuracy)."""
    cs = curves(rows, reference_spec)
    steps = sorted({n for c in cs.values() for n in c})
    lines = ["| sampler | spacing | " + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for (sampler, spacing), c in cs.items():
        lines.append(f"| {sampler} | {spacing} | " + " | ".join(_cell(c[n]) if n in c else "" for n in steps) + " |")
    ref = [r for r in rows if r["spec"] == reference_spec]
    if ref:
        floor = _stat(ref, "eval_fid_real")[0]
        lines.append(f"\nReference `{reference_spec}` ({ref[0]['sampler']}, {ref[0]['steps']} steps): FID "
                     f"{_cell(ref)}; real-data floor {floor:.1f}. Seeds: "
                     f"{', '.join(sorted({r['seed'] for r in rows}))} (each seed: the same labels and starting "
                     "noise for every sampler).")
    return "\n".join(lines)


def plot(rows, path, title, reference_spec):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (sampler, spacing), c in sorted(curves(rows, reference_spec).items()):
        n = sorted(c)
        stats = [_stat(c[k], "eval_fid") for k in n]
        ax.errorbar(n, [m for m, _, _ in stats], yerr=[sd for _, sd, _ in stats], marker="o", capsize=2,
                    label=f"{sampler} ({spacing})", linestyle="-" if spacing == "trailing" else "--")
    ref = [r for r in rows if r["spec"] == reference_spec]
    if ref:
        ax.axhline(_stat(ref, "eval_fid")[0], color="k", lw=0.8, ls=":", label=f"{reference_spec} (reference)")
        ax.axhline(_stat(ref, "eval_fid_real")[0], color="g", lw=0.8, ls=":", label="real-data floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted({int(r["steps"]) for r in rows}))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_yticks([v for v in (10, 15, 20, 30, 50, 100, 150) if v <= max(float(r["eval_fid"]) for r in rows) * 1.1])
    ax.set_xlabel("sampling steps (model evaluations per image)")
    ax.set_ylabel("domain FID (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


OPTIONS = [
    (["--model_path"], dict(required=True, help="the model's weights (an EMA .safetensors or .pt)")),
    (["--out"], dict(required=True, help="folder for steps.csv, steps.png, steps.md")),
    (["--samplers"], dict(type=_names, default=list(SAMPLERS), help="default: all (" + ",".join(SAMPLERS) + ")")),
    (["--steps"], dict(type=_ints, default=[5, 10, 15, 25, 50], help="default 5,10,15,25,50")),
    (["--spacings"], dict(type=_names, default=["trailing", "logsnr"],
                          help="trailing, logsnr (logsnr only for the solvers dpmpp_2m, unipc)")),
    (["--reference"], dict(default="ddim50", help="one more point, a sampler value as typed ('' for none)")),
    (["--seeds"], dict(type=_ints, default=[0], help="evaluation seeds (each: the same labels and noise for every "
                       "sampler); the table shows mean ± sd; default 0")),
]


def main() -> int:
    cfg, args = cli.parse(__doc__, options=OPTIONS, program="sampler_steps.py")
    for s in args.samplers:
        if s not in SAMPLERS:
            raise ConfigError(f"--samplers: unknown sampler {s!r} (known: {', '.join(SAMPLERS)})")
    for s in args.spacings:
        if s not in SPACINGS:
            raise ConfigError(f"--spacings: unknown spacing {s!r} (known: {', '.join(SPACINGS)})")
    if not os.path.isfile(args.model_path):
        raise ConfigError(f"--model_path {args.model_path}: no such file")
    if cli.maybe_dry_run(cfg, args):
        return 0
    from guided_diffusion.evaluation.continual import ContinualEvaluator, evaluation_classifier

    os.makedirs(args.out, exist_ok=True)
    device = experiment.init_process(cfg)
    weights = load_state_dict_file(args.model_path)
    info = experiment.info_for_weights(cfg, weights)
    model = experiment.build_model(cfg, info)
    load_checked(model, weights, args.model_path, what="model")
    model.to(device).eval()
    classes = list(range(info.num_classes))
    points = [(s, sp, n) for s in args.samplers for sp in args.spacings for n in args.steps
              if sp == "trailing" or s in SOLVERS]
    specs = [respacing_spec(s, n, sp) for s, sp, n in points] + ([args.reference] if args.reference else [])
    csv_path = os.path.join(args.out, "steps.csv")
    rows = read_csv(csv_path)
    done = {(r["spec"], int(r["seed"])) for r in rows}
    evaluator = ContinualEvaluator(cfg, evaluation_classifier(cfg))

    title = (f"{os.path.basename(os.path.dirname(os.path.abspath(args.model_path)))}: "
             f"{cfg.evaluation.num_samples} samples, {cfg.diffusion.noise_schedule} schedule")
    todo = [(seed, i, spec) for seed in args.seeds for i, spec in enumerate(specs) if (spec, seed) not in done]
    for k, (seed, i, spec) in enumerate(todo):
        if i < len(points):
            sampler, spacing, n = points[i]
        else:
            sampler, spacing, n = sampler_kind(spec), "adm", len(experiment.build_diffusion(cfg, spec).timestep_map)
        evaluator.ev.sampler = spec  # the evaluation's sampler (its settings, read once by the evaluator)
        evaluator.ev.seed = seed
        t0 = time.time()
        cols = evaluator.evaluate(model, classes, info.shape, device, f"{spec}")
        sec = time.time() - t0
        row = {"spec": spec, "seed": seed, "sampler": sampler, "spacing": spacing, "steps": n,
               "sec_per_image": round(sec / max(1, cfg.evaluation.num_samples), 5), **cols}
        rows.append(row)
        write_rows(csv_path, rows)
        print(f"[{k + 1}/{len(todo)}] {spec} seed {seed}: FID {cols.get('eval_fid'):.2f}, class acc "
              f"{cols.get('eval_class_acc'):.3f} ({sec:.0f} s)", flush=True)
    rows = read_csv(csv_path)
    plot(rows, os.path.join(args.out, "steps.png"), title, args.reference)
    with open(os.path.join(args.out, "steps.md"), "w") as f:
        f.write(f"# FID vs sampling steps: {title}\n\nFID (class accuracy) of `{args.model_path}`; "
                f"`python {' '.join(sys.argv)}`\n\n{table(rows, args.reference)}\n")
    print(table(rows, args.reference))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
