"""DKDM's claim in one protocol: the dynamic-iterative student against the data-free baseline and the
ablation (``scripts/dkdm_ablation.py``).

Students, all of the config's ``model`` (the same architecture, seed, batch, steps and teacher):

- ``baseline``: DKDM's data-free baseline -- the teacher generates a fixed set of images once
  (its sampler: ``sample.sampler``, ``sample.eta``), and the student is trained on
  them with the plain diffusion loss, as on a data set (``train.loss_weighting`` included). As in
  DKDM (50K teacher samples for CIFAR-10's 50K images) the set is as large as the real training set
  of ``data.dataset`` (``--baseline_images`` sets another size).
- ``iterative``, ``shuffled``, ``dynamic``: ``dkdm.mode`` (Xiang et al. 2025, sec. 4.4), trained by
  ``pipeline.train`` (one teacher NFE per student sample and step).

Each student's EMA and the teacher are then evaluated against the *real* test images of
``data.dataset`` (the config's ``evaluation`` section: domain FID, real-data floor, accuracy of
class-conditional samples). Rows go to ``<out>/results.csv``; ``<out>/README.md`` holds the table,
the two verdicts (dynamic beats the baseline; the order iterative > shuffled > dynamic in FID) and
a grid of every model. Every stage resumes: a student's training from its checkpoints, the
baseline's image set once complete, and finished evaluations from ``results.csv``. Each of those
records the teacher (``teacher.json``: path and sha256 of its weights, in ``<out>`` and in every
student's run folder; a ``teacher_sha256`` column) and the evaluation's features (``eval_features``:
the domain classifier with its weights' sha256): a rerun with another teacher or another evaluation
classifier stops with an error instead of mixing them in one table. ``--seeds`` repeats every row
per seed; the README gives mean ± std and judges the claims by the benchmark's rule.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import io
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import experiment
from ..data import InfiniteLoader
from ..diffusion.respace import sampler_label
from ..evaluation.report import as_number
from ..evaluation.seeds import RULE, all_better, cell, compare, mean_std
from ..image_util import from_uint8, save_grid
from ..runtime import dist_util
from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError
from ..runtime.logger import read_csv
from ..runtime.seeding import step_seed
from ..sampling.sample_sets import sample_set
from ..train_util import DiffusionObjective, TrainLoop
from .format import read_header
from .pipeline import build_setup
from .pipeline import train as train_dkdm
from .prepare import cache_nfe

MODES = ("baseline", "iterative", "shuffled", "dynamic")
COLUMNS = ["model", "seed", "params_M", "train_steps", "teacher_nfe", "prep_teacher_nfe", "eval_fid", "eval_fid_real",
           "eval_class_acc", "eval_precision", "eval_recall", "eval_sec"]


def pin_teacher(folder: str, teacher) -> None:
    """Record the teacher of ``folder`` (``teacher.json``), or refuse when it recorded another one."""
    path = os.path.join(folder, "teacher.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("sha256") != teacher.sha256:
            raise ConfigError(
                f"{folder} holds results of another teacher ({old.get('path')}, sha256 {str(old.get('sha256'))[:12]}) "
                f"than {teacher.path} (sha256 {teacher.sha256[:12]}): move {folder} aside to start over with this "
                "teacher, or set dkdm.teacher_path back")
        return
    if dist_util.is_main():
        os.makedirs(folder, exist_ok=True)
        ckpt.atomic_write_text(path, json.dumps({"path": teacher.path, "sha256": teacher.sha256}, indent=1) + "\n")
    dist_util.barrier()


def preparation_nfe(spec, cache_dir: str) -> int:
    """Teacher NFEs that preparing the student's cache took: the header's count (``prepare_cache`` writes
    ``cache_nfe(spec)`` there), else ``cache_nfe(spec)``. ``dynamic``: about rho T B * T / 2; ``shuffled``:
    about B T / 2; ``iterative``: 0 (its one batch starts at pure noise). Part of a cache student's
    ``teacher_nfe`` beside the B NFEs of every training step."""
    header = read_header(cache_dir)
    if header is not None and header.get("teacher_nfe") is not None:
        return int(header["teacher_nfe"])
    return cache_nfe(spec)


def baseline_images(cfg) -> int:
    """Images of the baseline's fixed teacher set: as many as the real training set (DKDM's baseline)."""
    x, _, _ = experiment.load_split(cfg, "train")
    return len(x)


def _teacher_set(cfg, setup, n: int, path: str, device, log, progress=None) -> tuple:
    """The teacher's fixed image set (uint8 NHWC, labels), generated once and kept in ``path``."""
    if os.path.isfile(path):
        with np.load(path) as f:
            if len(f["arr_0"]) == n:
                return f["arr_0"], f["arr_1"]
    spec = experiment.sample_spec(cfg, setup.info, device, class_cond=setup.teacher.class_cond, guidance_scale=1.0,
                                  clip_denoised=True)  # the teacher's own conditioning: no CFG
    log(f"baseline: drawing {n} teacher images ({sampler_label(cfg.sample.sampler, cfg.sample.eta)})")
    t0 = time.time()
    images, labels = sample_set(setup.teacher.net, spec, num_samples=n, batch_size=min(n, 256),
                                seed=step_seed(cfg.seed, 0, 3) % (2**31), classes=range(setup.info.num_classes or 1),
                                progress=progress)
    if dist_util.is_main():
        buf = io.BytesIO()
        np.savez(buf, arr_0=images, arr_1=labels)
        ckpt.atomic_write_bytes(path, buf.getvalue())
    dist_util.barrier()
    log(f"baseline: {n} teacher images ({sampler_label(cfg.sample.sampler, cfg.sample.eta)}) "
        f"in {time.time() - t0:.0f} s -> {path}")
    return images, labels


def train_baseline(cfg, device, logger, n_images: int = 0):
    """The data-free baseline student: plain diffusion training on a fixed set of teacher images."""
    setup = build_setup(cfg, device)
    n = n_images or baseline_images(cfg)
    run_dir = experiment.run_dir_of(cfg)
    images, labels = _teacher_set(cfg, setup, n, os.path.join(run_dir, "teacher_set.npz"), device, logger.log,
                                  progress=logger.progress_bar)
    x, y = from_uint8(images), torch.as_tensor(labels, dtype=torch.long)
    model = experiment.build_model(cfg, setup.info)
    # The student learns the whole (unspaced) chain of the teacher's schedule, as on real data.
    diffusion = experiment.build_diffusion(cfg, "")
    data = InfiniteLoader(x, y, cfg.train.batch_size, rank=dist_util.get_rank(), world_size=dist_util.get_world_size(),
                          seed=step_seed(cfg.seed, 0, 1) % (2**31))
    objective = DiffusionObjective.from_config(cfg, diffusion, setup.info.num_classes)
    loop = TrainLoop(model=model, data=data, cfg=cfg.train, run_dir=run_dir, objective=objective, seed=cfg.seed,
                     logger=logger, device=device, export_config=experiment.export_config(cfg, setup.info),
                     tag="baseline")
    loop.run()
    sampler = experiment.build_diffusion(cfg, cfg.sample.sampler)
    return loop, setup, n * sampler.num_timesteps


Key = Tuple[str, int]  # (model, seed)


def _read(path: str, default_seed: int = 0) -> Dict[Key, Dict[str, str]]:
    """The rows of ``results.csv`` by (model, seed); a row written before the seed column had the
    config's seed (``default_seed``)."""
    out = {}
    for r in read_csv(path):
        r.setdefault("seed", "")
        if r["seed"] in ("", None):
            r["seed"] = str(default_seed)
        out[(r["model"], int(r["seed"]))] = r
    return out


def _write(path: str, rows: Dict[Key, Dict]) -> None:
    keys = list(COLUMNS)
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for key in sorted(rows, key=_order):
        w.writerow(rows[key])
    ckpt.atomic_write_text(path, buf.getvalue())


def _order(key: Key):
    model, seed = key
    names = ["teacher"] + [f"student_{m}" for m in MODES]
    return (names.index(model) if model in names else len(names), model, seed)


def _store(path: str, row: Dict, default_seed: int) -> Dict[Key, Dict]:
    """Add ``row`` to ``results.csv``, merged with what other processes (other seeds) wrote since
    this one read it: the file is re-read and rewritten under a lock. Returns every row."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            rows = _read(path, default_seed)
            rows[(row["model"], int(row["seed"]))] = row
            _write(path, rows)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return rows


def run_ablation(cfg, out_dir: str, modes: Sequence[str] = MODES, baseline_n: int = 0,
                 log: Callable[[str], None] = print, seeds: Optional[Sequence[int]] = None) -> Dict[Key, Dict]:
    """Train (or resume) every student of ``modes`` for each of ``seeds`` (default: the config's),
    evaluate them and the teacher; returns every row of ``results.csv`` by (model, seed).

    A student whose row exists is not trained again. Several processes (one seed each) may share
    ``out_dir``: each adds its rows to ``results.csv`` under a lock."""
    from ..evaluation.continual import ContinualEvaluator, evaluation_classifier

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown DKDM ablation mode(s) {bad}; valid: {', '.join(MODES)}")
    seeds = [int(s) for s in (seeds if seeds is not None else [cfg.seed])]
    device = experiment.init_process(cfg)
    os.makedirs(out_dir, exist_ok=True)
    results = os.path.join(out_dir, "results.csv")
    rows: Dict[Key, Dict] = dict(_read(results, cfg.seed))
    setup = build_setup(cfg, device)
    if rows and not os.path.isfile(os.path.join(out_dir, "teacher.json")):
        raise ConfigError(f"{results} does not record its teacher (written before teacher.json): move {out_dir} "
                          "aside to start over")
    pin_teacher(out_dir, setup.teacher)
    classifier = evaluation_classifier(cfg, log=log)  # loaded (or trained where missing) once, for every seed
    features = ContinualEvaluator(cfg, classifier, log=log).features.name
    other = sorted({r.get("eval_features") or "an unrecorded classifier" for r in rows.values()} - {features})
    if other:
        raise ConfigError(f"{results} holds rows measured with other evaluation features ({'; '.join(other)}) than "
                          f"{features}: FIDs under two classifiers do not compare; move {out_dir} aside to start over, "
                          "or set evaluation.classifier_path to the classifier of those rows")
    grids = os.path.join(out_dir, "grids")
    os.makedirs(grids, exist_ok=True)

    def evaluate(scfg, evaluator, name: str, net, extra: Dict) -> None:
        classes = list(range(setup.info.num_classes)) if setup.info.num_classes else [0]
        cols = evaluator.evaluate(net, classes, setup.info.shape, device, f"of the {name}")
        row = {"model": name, "seed": scfg.seed,
               "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3), **extra, **cols,
               "teacher_sha256": setup.teacher.sha256}
        n = 8 * len(classes)
        imgs, _ = sample_set(net, experiment.grid_spec(scfg, setup.info, device, guidance_scale=1.0), num_samples=n,
                             batch_size=min(n, 100), seed=scfg.seed,
                             labels=[c for c in classes for _ in range(8)] if cfg.model.class_cond else None)
        if dist_util.is_main():
            save_grid(imgs, os.path.join(grids, f"{name}_s{scfg.seed}.png"), nrow=8 if cfg.model.class_cond else None)
            for key, r in _store(results, row, cfg.seed).items():  # and what other seeds' processes wrote
                rows.setdefault(key, r)
        dist_util.barrier()
        rows[(name, scfg.seed)] = row
        log(f"{name} (seed {scfg.seed}): FID {row.get('eval_fid')} (floor {row.get('eval_fid_real')}), class acc "
            f"{row.get('eval_class_acc')}")

    for seed in seeds:
        scfg_seed = dataclasses.replace(cfg, seed=seed)
        evaluator = ContinualEvaluator(scfg_seed, classifier, log=log)  # its samples follow the seed

        if ("teacher", seed) not in rows:
            evaluate(scfg_seed, evaluator, "teacher", setup.teacher.net, {"train_steps": "", "teacher_nfe": ""})
        for mode in modes:
            name = f"student_{mode}"
            if (name, seed) in rows:
                continue
            run = f"{cfg.name}_{mode}_s{seed}"
            scfg = dataclasses.replace(scfg_seed, name=run, dkdm=dataclasses.replace(
                cfg.dkdm, mode=mode if mode != "baseline" else "dynamic",
                cache_dir=os.path.join(cfg.out_dir, run, "cache") if mode != "baseline" else ""))
            logger = experiment.setup_run(scfg)
            pin_teacher(experiment.run_dir_of(scfg), setup.teacher)  # before its checkpoints or teacher set resume
            if mode == "baseline":
                loop, _, nfe = train_baseline(scfg, device, logger, baseline_n)
                prep = 0
            else:
                loop, s = train_dkdm(scfg, device, logger)
                prep = preparation_nfe(s.spec, s.cache_dir)
                nfe = cfg.train.batch_size * loop.step + prep
            ema = copy.deepcopy(loop.model)
            ema.load_state_dict(loop.ema_state_dicts()[loop.ema_rates[0]])
            ema.eval()
            evaluate(scfg, evaluator, name, ema, {"train_steps": loop.step, "teacher_nfe": nfe,
                                                  "prep_teacher_nfe": prep})
            logger.close()
            del loop, ema
    return rows


def _values(rows: Dict[Key, Dict], model: str, key: str = "eval_fid") -> List[float]:
    """``key`` of ``model`` over the seeds that have it."""
    out = []
    for (m, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]):
        if m == model:
            v = as_number(r.get(key))
            if v is not None:
                out.append(v)
    return out


def verdicts(rows: Dict[Key, Dict]) -> List[str]:
    """DKDM's two claims, judged by the benchmark's rule (``evaluation.seeds.RULE``) on the FIDs over seeds."""
    def fid(m):
        return _values(rows, f"student_{m}")

    def judged(outcomes, n):
        v = all_better(outcomes)
        return f"**{v}**" + (" (one seed)" if n < 2 else "")

    out = []
    d, b = fid("dynamic"), fid("baseline")
    if d and b:
        out.append(f"- *The dynamic-iterative student beats the data-free baseline* (same student, teacher, batch and "
                   f"steps): FID {mean_std(d)} vs {mean_std(b)}: {judged([compare(d, b, False)], min(len(d), len(b)))}.")
    it, sh = fid("iterative"), fid("shuffled")
    if sh and d and not it:
        out.append(f"- *Ablation order iterative > shuffled > dynamic in FID*: iterative not measured yet; shuffled "
                   f"{mean_std(sh)} > dynamic {mean_std(d)}: {judged([compare(d, sh, False)], min(len(sh), len(d)))} "
                   "for that pair; the order: **not resolved**.")
    if it and sh and d:
        out.append(f"- *Ablation order iterative > shuffled > dynamic in FID*: {mean_std(it)} > {mean_std(sh)} > "
                   f"{mean_std(d)}: {judged([compare(sh, it, False), compare(d, sh, False)], min(map(len, (it, sh, d))))}.")
    return out


def write_report(cfg, out_dir: str, rows: Dict[Key, Dict], command_line: str) -> str:
    order = ["teacher"] + [f"student_{m}" for m in MODES]
    models = order + sorted({m for m, _ in rows if m not in order})
    seeds = sorted({s for _, s in rows})
    table = ["| model | seeds | params (M) | student steps | teacher NFEs (of them preparation) | FID ↓ | real floor | class acc ↑ | precision | "
             "recall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        mine = [r for (m, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]) if m == name]
        if not mine:
            continue
        first = mine[0]
        table.append("| " + " | ".join(
            [name, str(len(mine))] + [str(_fmt(first.get(k))) for k in ("params_M", "train_steps")] + [_nfe_cell(first)]
            + [cell(_values(rows, name, k), 4 if k == "eval_fid" else 3)
               for k in ("eval_fid", "eval_fid_real", "eval_class_acc", "eval_precision", "eval_recall")]) + " |")
    t = next((r for (m, _), r in rows.items() if m == "teacher"), {})
    s = next((r for m in ("dynamic", *MODES) for (n, _), r in rows.items() if n == f"student_{m}"), {})  # one arch
    ratio = ""
    try:
        ratio = f"{float(t['params_M']) / float(s['params_M']):.1f}x fewer parameters than the teacher"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    protocol = next((r.get("eval_protocol") for r in rows.values() if r.get("eval_protocol")), "")
    lines = [f"# DKDM on {cfg.data.dataset}: dynamic iterative distillation against the data-free baseline", "",
             f"- command: `{command_line}`", f"- teacher: `{cfg.dkdm.teacher_path}`; students: `model` of the config"
             f"{f' ({ratio})' if ratio else ''}; batch {cfg.train.batch_size}, {cfg.train.total_steps} steps each; chain "
             f"{cfg.diffusion.timestep_respacing or cfg.diffusion.diffusion_steps} steps",
             f"- seeds: {', '.join(map(str, seeds))} (each: the students' initialisation, data order and cache, the "
             "baseline's teacher set, the evaluation's samples); cells are mean ± std over the seeds",
             f"- evaluation: {protocol}", "",
             "\n".join(table), "", "## Verdicts", "", f"Rule (as the fidelity benchmark's): {RULE}.", ""]
    lines += verdicts(rows) + ["", f"## Samples (a row per class; seed {seeds[0] if seeds else ''})", ""]
    for name in order:
        grid = f"{name}_s{seeds[0]}.png" if seeds else ""
        if grid and os.path.isfile(os.path.join(out_dir, "grids", grid)):
            lines += [f"**{name}**", "", f"![{name}](grids/{grid})", ""]
    path = os.path.join(out_dir, "README.md")
    ckpt.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _nfe_cell(row: Dict) -> str:
    """``teacher_nfe`` with its preparation part in brackets; rows written before ``prep_teacher_nfe``
    existed left preparation out, and say so."""
    total = _fmt(row.get("teacher_nfe"))
    if total in ("", None):
        return ""
    prep = row.get("prep_teacher_nfe")
    if prep in ("", None):
        return f"{total} (preparation not counted)" if str(row.get("model", "")).startswith("student_") and \
            row.get("model") != "student_baseline" else str(total)
    return f"{total} ({_fmt(prep)})"


def _fmt(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else v
    return str(int(f)) if f.is_integer() and abs(f) < 1e12 else f"{f:.4g}"


__all__ = ["run_ablation", "write_report", "verdicts", "baseline_images", "MODES"]
