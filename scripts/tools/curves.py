"""Learning curves: IID training of a config on a class subset, evaluated as the images seen grow
(the library half of ``scripts/learning_curve.py``, its entry point).

``run_curve(cfg, classes, points, run_dir)`` trains one model (``TrainLoop``, automatic resume) on
the real training images of ``classes`` and, each time the number of images seen reaches a point,
evaluates the EMA weights with the continual loop's evaluator (``evaluation`` section: domain FID
against the real test images of those classes, the floor of as many real training images, the
evaluation classifier's accuracy on class-conditional samples, precision / recall). One row per
point goes to ``curve.csv``; ``grid_{images}.png`` shows the samples (a row per class) and
``curve.png`` the curve.

Points are counted in images (``steps = ceil(images / train.batch_size)``), so curves at different
batch sizes line up. The learning-rate schedule spans the whole run (``train.total_steps`` = the
last point): with ``lr_schedule: constant`` every point is what a run of that length gives; with a
decaying schedule the earlier points are snapshots of the longer run.

A rerun resumes: points already in ``curve.csv`` are kept, training continues from the latest
checkpoint (one is written at every point).

Plateau: the first point whose doubling improves FID by less than ``PLATEAU_GAIN`` (10%), i.e.
``FID(2N) > 0.9 FID(N)`` -- the budget past which more training buys little.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from guided_diffusion import experiment
from guided_diffusion.data import InfiniteLoader
from guided_diffusion.image_util import save_grid
from guided_diffusion.runtime import dist_util
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime.logger import read_csv
from guided_diffusion.runtime.seeding import step_seed
from guided_diffusion.sampling.sample_sets import sample_set
from guided_diffusion.train_util import DiffusionObjective, TrainLoop

PLATEAU_GAIN = 0.10
COLUMNS = ["images", "steps", "train_sec", "sec_per_image", "loss", "eval_fid", "eval_fid_real", "eval_class_acc",
           "eval_precision", "eval_recall", "eval_kld", "eval_samples", "eval_sec"]


def parse_points(text: str) -> List[int]:
    """'4k,8k,16000' -> [4000, 8000, 16000] (sorted, unique, > 0)."""
    out = []
    for word in str(text).split(","):
        word = word.strip().lower()
        if not word:
            continue
        scale = 1
        if word[-1] in "km":
            scale = 1000 if word[-1] == "k" else 1_000_000
            word = word[:-1]
        try:
            value = int(round(float(word) * scale))
        except ValueError:
            raise ValueError(f"learning-curve point {word!r} is not a number of images (e.g. 8k, 16000)") from None
        if value <= 0:
            raise ValueError(f"learning-curve points must be > 0 images, got {value}")
        out.append(value)
    if not out:
        raise ValueError("no learning-curve points given")
    return sorted(set(out))


def doubling_points(start: int, stop: int) -> List[int]:
    """start, 2 start, 4 start, ... up to stop (inclusive)."""
    out, p = [], int(start)
    while p <= stop:
        out.append(p)
        p *= 2
    return out


def read_curve(run_dir: str) -> List[Dict[str, str]]:
    return read_csv(os.path.join(run_dir, "curve.csv"))


def _write_curve(run_dir: str, rows: List[Dict]) -> None:
    keys = list(COLUMNS)
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in sorted(rows, key=lambda r: int(float(r["images"]))):
        w.writerow(r)
    ckpt.atomic_write_text(os.path.join(run_dir, "curve.csv"), buf.getvalue())


def _train_seconds(run_dir: str, step: int) -> float:
    """Training seconds up to ``step`` from progress.csv (each row: sec_per_step over the steps since
    the previous row), so that a resumed run reports its whole cost."""
    path = os.path.join(run_dir, "progress.csv")
    if not os.path.isfile(path):
        return float("nan")
    total, prev = 0.0, 0
    rows = sorted((r for r in read_csv(path) if r.get("step") and r.get("sec_per_step")),
                  key=lambda r: int(float(r["step"])))
    for r in rows:
        s = int(float(r["step"]))
        if s > step:
            break
        if s > prev:
            total += float(r["sec_per_step"]) * (s - prev)
            prev = s
    return total


def _last_loss(run_dir: str, step: int) -> Optional[float]:
    loss = None
    for r in read_csv(os.path.join(run_dir, "progress.csv")):
        if r.get("step") and int(float(r["step"])) <= step and r.get("loss") not in (None, ""):
            loss = float(r["loss"])
    return loss


def plateau(rows: Sequence[Dict], key: str = "eval_fid", gain: float = PLATEAU_GAIN,
            lower_is_better: bool = True, floor_key: Optional[str] = "eval_fid_real") -> Optional[int]:
    """The plateau: the first point N (images) from which every measured doubling (M -> 2M, M >= N)
    is flat -- it improves ``key`` by less than ``gain`` (relative; for accuracies, the error
    1 - acc), or ``key`` at M is already within ``gain`` of the real-data floor (``floor_key``: the
    same metric for real images; below it, further gains are the estimate's noise). None when the
    last measured doubling is not flat, or no doubling was measured. A stall followed by a further
    drop (noisy short runs do this) is not a plateau. The last point counts when it is at the floor."""
    vals, floors = {}, {}
    for r in rows:
        v = r.get(key)
        if v not in (None, ""):
            n = int(float(r["images"]))
            vals[n] = float(v) if lower_is_better else 1.0 - float(v)
            f = r.get(floor_key) if floor_key and lower_is_better else None
            if f not in (None, ""):
                floors[n] = float(f)
    def at_floor(n):
        return n in floors and vals[n] <= (1.0 + gain) * floors[n]

    # Points that can be judged: a measured doubling, or already at the floor (the last point too).
    pairs = [n for n in sorted(vals) if 2 * n in vals or at_floor(n)]
    if not pairs:
        return None

    def flat(n):
        return at_floor(n) or (vals[n] > 0 and vals[2 * n] > (1.0 - gain) * vals[n])

    flags = [flat(n) for n in pairs]
    if not flags[-1]:
        return None
    i = len(flags) - 1
    while i > 0 and flags[i - 1]:
        i -= 1
    return pairs[i]


def run_curve(cfg, classes: Sequence[int], points: Sequence[int], run_dir: str, grid_per_class: int = 8,
              log=print) -> List[Dict]:
    """Train ``cfg`` on ``classes`` and evaluate at each of ``points`` (images seen); returns the rows."""
    from guided_diffusion.evaluation.continual import ContinualEvaluator, evaluation_classifier

    points = sorted(int(p) for p in points)
    B = cfg.train.batch_size
    steps = [math.ceil(p / B) for p in points]
    tcfg = dataclasses.replace(cfg.train, total_steps=steps[-1], save_interval=0,
                               keep_checkpoints=max(2, cfg.train.keep_checkpoints))
    device = experiment.init_process(cfg)
    logger = experiment.setup_run(cfg, run_dir)
    x, y, info = experiment.load_split(cfg, "train", classes=classes)
    model = experiment.build_model(cfg, info)
    experiment.init_weights(cfg, model, logger.log)
    diffusion = experiment.build_diffusion(cfg)
    logger.log(experiment.describe(cfg, info, model, len(x)) + f"; classes {list(classes)}; points (images) "
               + ", ".join(map(str, points)) + f" = steps {', '.join(map(str, steps))} at batch {B}")
    data = InfiniteLoader(x, y, B, rank=dist_util.get_rank(), world_size=dist_util.get_world_size(),
                          seed=step_seed(cfg.seed, 0, 1) % (2**31), random_flip=cfg.data.random_flip)
    objective = DiffusionObjective.from_config(cfg, diffusion, info.num_classes)
    loop = TrainLoop(model=model, data=data, cfg=tcfg, run_dir=run_dir, objective=objective,
                     seed=step_seed(cfg.seed, 0, 2) % (2**31), logger=logger, device=device,
                     export_config=experiment.export_config(cfg, info), tag="curve")
    rows = {int(float(r["images"])): r for r in read_curve(run_dir)}
    evaluator = ContinualEvaluator(cfg, evaluation_classifier(cfg, log=logger.log), log=logger.log)

    rate = loop.ema_rates[0]
    prev_step = 0
    import copy

    for images, step in zip(points, steps):
        if images in rows:
            prev_step = step
            continue
        if loop.step > step:  # a point added before where the resumed run already is: its weights are gone
            logger.log(f"point {images} images (step {step}) lies before the run's step {loop.step}: skipped")
            continue
        loop.run(until=step)
        if loop.step < step:  # preempted inside run() raises; this is a safety net
            break
        ema = copy.deepcopy(model)
        ema.load_state_dict(loop.ema_state_dicts()[rate])
        ema.eval()
        cols = evaluator.evaluate(ema, classes, info.shape, device, f"after {images} images")
        if grid_per_class > 0:
            grid_classes = [c for c in classes for _ in range(grid_per_class)] if cfg.model.class_cond else None
            n = grid_per_class * len(classes)
            imgs, _ = sample_set(ema, experiment.grid_spec(cfg, info, device), num_samples=n,
                                 batch_size=min(n, 100), seed=cfg.seed, labels=grid_classes)
            if dist_util.is_main():
                save_grid(imgs, os.path.join(run_dir, f"grid_{images:08d}.png"),
                          nrow=grid_per_class if cfg.model.class_cond else None)
        del ema
        train_sec = _train_seconds(run_dir, step)
        prev_sec = _train_seconds(run_dir, prev_step) if prev_step else 0.0
        seg_images = (step - prev_step) * B
        row = {"images": images, "steps": step, "train_sec": round(train_sec, 2),
               "sec_per_image": round((train_sec - prev_sec) / max(1, seg_images), 6),
               "loss": _last_loss(run_dir, step)}
        row.update(cols)
        rows[images] = row
        prev_step = step
        if dist_util.is_main():
            _write_curve(run_dir, list(rows.values()))
            plot_curves([run_dir], os.path.join(run_dir, "curve.png"))
        dist_util.barrier()
        logger.log(f"{images} images ({step} steps): FID {cols.get('eval_fid')} (real floor "
                   f"{cols.get('eval_fid_real')}), class acc {cols.get('eval_class_acc')}, train {train_sec:.0f} s")
    out = [rows[p] for p in points if p in rows]
    n_fid = plateau(out)
    logger.log("plateau (doubling improves FID < 10%, or FID within 10% of the real-data floor): "
               + (f"reached at {n_fid} images" if n_fid else "not reached within the points"))
    logger.close()
    return out


def label_of(run_dir: str) -> str:
    path = os.path.join(run_dir, "label.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    return os.path.basename(os.path.normpath(run_dir))


def plot_curves(run_dirs: Sequence[str], out_path: str, title: str = "", labels: Optional[Sequence[str]] = None
                ) -> bool:
    """FID (log-log) and class accuracy against images seen, one line per run; the real-data floor
    dashed (one grey line when the runs share it, else one per run in its colour). Returns False
    when no run has a point yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(d, read_curve(d)) for d in run_dirs]
    curves = [(d, r) for d, r in curves if r]
    if not curves:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    floors, ticks = [], set()
    for i, (d, rows) in enumerate(curves):
        label = labels[i] if labels else label_of(d)
        xs = [int(float(r["images"])) for r in rows]
        ticks.update(xs)
        color = None
        for ax, key in zip(axes, ("eval_fid", "eval_class_acc")):
            pts = [(x, float(r[key])) for x, r in zip(xs, rows) if r.get(key) not in (None, "")]
            if pts:
                color = ax.plot(*zip(*pts), marker="o", label=label, color=color)[0].get_color()
        real = [float(r["eval_fid_real"]) for r in rows if r.get("eval_fid_real") not in (None, "")]
        if real:
            floors.append((float(np.median(real)), color))
    if floors:
        values = [f for f, _ in floors]
        if max(values) <= 1.05 * min(values):  # one reference set: one floor
            axes[0].axhline(float(np.median(values)), color="grey", linestyle="--", label="real data (floor)")
        else:
            for j, (f, color) in enumerate(floors):
                axes[0].axhline(f, color=color, linestyle="--", alpha=0.6,
                                label="real data (floor of each)" if j == 0 else None)
    axes[0].set_ylabel("FID (domain features) ↓")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("class accuracy of samples ↑")
    axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [_kimg(x) for x in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("training images seen")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return True


def _kimg(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else (f"{n / 1000:g}k" if n >= 1000 else str(n))


def curve_table(run_dirs: Sequence[str]) -> str:
    """A Markdown table: per run and point, FID, floor, class acc, seconds per image; and the plateau."""
    lines = ["| run | images | steps | FID | floor | class acc | train s | s/img |", "|---|---|---|---|---|---|---|---|"]
    for d in run_dirs:
        rows = read_curve(d)
        for r in rows:
            lines.append(f"| {label_of(d)} | {r['images']} | {r['steps']} | {_f(r.get('eval_fid'))} | "
                         f"{_f(r.get('eval_fid_real'))} | {_f(r.get('eval_class_acc'))} | {_f(r.get('train_sec'))} | "
                         f"{_f(r.get('sec_per_image'))} |")
    out = "\n".join(lines) + "\n"
    for d in run_dirs:
        rows = read_curve(d)
        n = plateau(rows)
        out += (f"\n- {label_of(d)}: FID plateau (doubling gains < 10%, or within 10% of the real-data floor) "
                + (f"at {n} images" if n else "not reached") + ".")
    return out + "\n"


def _f(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return f"{f:.4g}"


__all__ = ["run_curve", "plot_curves", "read_curve", "plateau", "parse_points", "doubling_points", "curve_table"]
