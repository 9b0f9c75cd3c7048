"""The diffusion model's continual run: tasks one after another (``continual.tasks``: resume,
preemption, metrics), each trained by ``TrainLoop`` with a method's parts.

Run folder layout (``experiments/<name>/``)::

    config.yaml            resolved config
    metrics.csv            one row per finished task (cost, losses, evaluation columns)
    task_{k}/              the task's TrainLoop run folder: checkpoints, progress.csv, log.txt
        replay_*.pt        what a method generated for this task (reused on resume)
        method_state.pt    the method's continual state after the task (Fisher, buffer, ...)
        samples.png        a grid: one row per class seen so far (EMA weights)
        task_done.json     written last: the task is complete (its row, and method_state.pt's size and sha256)

Resume: a rerun skips finished tasks, restores the model, EMA, method state and schedule sampler
from the last finished one, and the unfinished task resumes from its latest checkpoint
(``TrainLoop``). A task marked done whose final checkpoint or method state is corrupt is redone
from its latest intact checkpoint (the same steps, so the same result). SIGTERM/SIGUSR1 stop the
run at the next step boundary, or after the current task's training or evaluation, with
``Preempted`` (exit 0).
See docs/reliability.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from typing import Callable, Dict, List, Optional

import blobfile as bf
import numpy as np

from .. import experiment
from ..data import InfiniteLoader
from ..image_util import save_grid
from ..runtime import dist_util
from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError, dump_config
from ..runtime.logger import read_csv
from ..runtime.precision import describe_cpu
from ..runtime.seeding import step_seed
from ..sampling.sample_sets import sample_set
from ..runtime.preemption import PreemptionFlag
from ..train_util import TrainLoop, parse_ema_rates
from .adaptation import export_record
from .base import ContinualContext, freeze
from .methods import build_method
from .scenario import Task, build_scenario
from .tasks import TaskLearner, resume_point, run_tasks, stop_if_preempted
from .warm_start import copy_first_task, first_task_results, first_task_source


def _task_damage(ctx: ContinualContext, task: Task) -> Optional[str]:
    """None if the finished ``task``'s final checkpoint and method state are intact, else what is wrong."""
    tdir, path = ctx.task_dir(task), f"{ctx.task_dir(task)}/task_done.json"
    try:
        done = json.loads(ckpt.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        return f"{path} is corrupt ({e})"
    reason = ckpt.verify_checkpoint(tdir, task.num_steps)
    if reason is not None:
        return f"its final checkpoint (step {task.num_steps}) is not intact: {reason}"
    for name, entry in done.get("files", {}).items():  # absent in runs of older versions
        reason = ckpt.verify_file(bf.join(tdir, name), entry)
        if reason is not None:
            return reason
    return None


def final_weights(task_dir: str, step: Optional[int] = None):
    """(model state_dict, {ema rate: state_dict}) of the checkpoint at ``step`` (default: the latest intact)."""
    if step is None:
        step = ckpt.latest_checkpoint(task_dir)
        if step is None:
            raise ckpt.CheckpointError(f"{task_dir} is marked done but has no complete checkpoint")
    manifest = ckpt.read_manifest(task_dir, step)
    # Not the loop state (with a DKDM cache it holds the whole cache): _final_objective_state reads it.
    files = {n: ckpt.load_torch(bf.join(task_dir, n)) for n in manifest["files"] if n.startswith(("model", "ema_"))}
    model = files[f"model{step:06d}.pt"]
    emas = {float(n.split("_")[1]): sd for n, sd in files.items() if n.startswith("ema_")}
    return model, emas


def _final_objective_state(task_dir: str, step: int) -> dict:
    """The training objective's state in the checkpoint at ``step`` (the schedule sampler's, ...)."""
    return ckpt.load_torch(bf.join(task_dir, f"state{step:06d}.pt"))["components"].get("objective", {})


def task_grid(ctx: ContinualContext, task: Task, model, per_class: int, seed: int):
    """Samples of every seen class (a row each), or unconditional samples, with the eval sampler."""
    cfg = ctx.cfg
    n = per_class * len(task.seen_classes)
    classes = [c for c in task.seen_classes for _ in range(per_class)]
    return sample_set(model, experiment.grid_spec(cfg, ctx.info, ctx.device), num_samples=n,
                      batch_size=min(n, max(cfg.sample.batch_size, per_class)), seed=seed,
                      labels=classes if cfg.model.class_cond else None, log=ctx.logger.log, desc=f"task {task.index} grid")


def _grid_from_evaluation(ctx: ContinualContext, task: Task, drawn: List):
    """The grid's images taken from the evaluations' samples (``drawn``: what each evaluator handed back
    beside its columns; the first ``grid_per_class`` of each seen class) when one was drawn with the grid's
    sampler and has enough of every class: no second sampling pass. None otherwise."""
    cfg = ctx.cfg
    k = cfg.continual.grid_per_class
    for d in drawn:
        if d is None or (d.sampler, d.eta) != (cfg.continual.eval_sampler, 0.0) or not cfg.model.class_cond:
            continue
        images, labels = d.images, d.labels
        picks = [np.flatnonzero(labels == c)[:k] for c in task.seen_classes]
        if all(len(p) == k for p in picks):
            return images[np.concatenate(picks)]
    return None


def run_continual(cfg) -> ContinualContext:
    """Run (or resume) every task of the scenario of ``cfg``; returns the context.

    Raises ``Preempted`` after SIGTERM/SIGUSR1 (the work so far saved; rerun to resume).
    """
    flag = PreemptionFlag()
    try:
        return _run_continual(cfg, flag)
    finally:
        flag.close()


def _run_continual(cfg, flag: PreemptionFlag) -> ContinualContext:
    device = experiment.init_process(cfg)
    if cfg.train.batch_size % dist_util.get_world_size():  # checked before any work (TrainLoop checks again)
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by the world size "
                          f"{dist_util.get_world_size()}: the global batch is split evenly over the ranks")
    run_dir = experiment.run_dir_of(cfg)
    if dist_util.is_main():
        bf.makedirs(run_dir)
    dist_util.barrier()
    root_logger = experiment.make_logger(cfg, run_dir)
    # Everything below up to the config's write checks the input (data, scenario, model, method, the
    # finished tasks' files): a bad config fails here without replacing an existing run's config.yaml.
    x, y, info = experiment.load_split(cfg, "train")
    x, info = experiment.to_model_space(cfg, x, info)  # latent diffusion: the autoencoder's latents
    scenario = build_scenario(cfg.continual, info.num_classes, info.task_classes)
    model = experiment.build_model(cfg, info)
    experiment.init_weights(cfg, model, root_logger.log)  # task 0 starts from them (finished tasks replace them)
    model = model.to(device)
    diffusion = experiment.build_diffusion(cfg)
    ctx = ContinualContext(cfg, scenario, x, y, info, model, diffusion, device, run_dir, root_logger,
                           dist_util.get_rank(), dist_util.get_world_size())
    learner = DiffusionLearner(ctx, build_method(cfg.method, ctx), flag)
    root_logger.log(experiment.describe(cfg, info, model, len(x)))
    root_logger.log(f"method {learner.method.name}; class order {list(scenario.class_order)}; tasks "
                    + "; ".join(f"{t.index}: classes {list(t.classes)} x {t.num_steps} steps" for t in scenario.tasks))
    first = resume_point(scenario.tasks, learner, root_logger.log)
    if first == 0 and cfg.continual.init_from:  # task 0 from another run (checked before any work)
        learner.init_step = first_task_source(cfg, scenario.tasks[0], info)
    if dist_util.is_main():
        ckpt.atomic_write_text(bf.join(run_dir, "config.yaml"), dump_config(cfg))
    dist_util.barrier()
    learner.evaluators = _evaluators(cfg, root_logger)
    run_tasks(scenario.tasks[first:], learner, run_dir, flag)
    return ctx


class DiffusionLearner(TaskLearner):
    """The diffusion model's tasks: each trained by ``TrainLoop`` with the method's parts, then
    evaluated (the configured evaluators, a grid of samples per seen class)."""

    def __init__(self, ctx: ContinualContext, method, flag: PreemptionFlag):
        self.ctx, self.method, self.flag = ctx, method, flag
        # One diffusion objective, hence one schedule sampler, for the whole run: a loss-aware sampler's
        # history carries over from task to task (each task's checkpoints hold it; the methods wrap it).
        self.base = experiment.build_objective(ctx.cfg, ctx.diffusion, ctx.info.num_classes)
        self.rates = parse_ema_rates(ctx.cfg.train.ema_rate)
        self.ema_state = None
        self.init_step = None  # the step of continual.init_from's task 0 to copy (None: train task 0)
        self.evaluators: List[Callable] = []  # (ctx, task, ema_model) -> (columns, DrawnSamples or None)
        self.logger = None

    def done_path(self, task: Task) -> str:
        return f"{self.ctx.task_dir(task)}/task_done.json"

    def damage(self, task: Task) -> Optional[str]:
        return _task_damage(self.ctx, task)

    def adapt(self, task: Task) -> None:
        """The method's model for ``task`` and its trainable parameters (``requires_grad``); an EMA
        entry for a parameter the EMA lacks starts from its weights."""
        ctx = self.ctx
        ctx.model = self.method.adapt_model(task, ctx.model)
        names = self.method.trainable(task, ctx.model)
        if names is not None:
            names, params = set(names), dict(ctx.model.named_parameters())
            unknown = sorted(names - set(params))
            if unknown:
                raise ValueError(f"method {self.method.name}: trainable names no parameter: {unknown[:5]}")
            for n, p in params.items():
                p.requires_grad_(n in names)
        if self.ema_state is not None:
            for sd in self.ema_state.values():
                for n, p in ctx.model.named_parameters():
                    if n not in sd:
                        sd[n] = p.detach().clone()

    def restore(self, task: Task) -> None:
        tdir = self.ctx.task_dir(task)
        self.adapt(task)
        model_sd, self.ema_state = final_weights(tdir, task.num_steps)
        ckpt.load_checked(self.ctx.model, model_sd, f"{tdir}/model{task.num_steps:06d}.pt")
        state_path = f"{tdir}/method_state.pt"
        if bf.exists(state_path):
            try:
                self.method.load_state_dict(ckpt.load_torch(state_path))
            except (KeyError, TypeError, AttributeError) as e:  # --force over a run of another method
                raise ckpt.CheckpointError(f"{state_path} is not a state of method {self.method.name} ({type(e).__name__}: {e}): "
                                           "the finished tasks were trained with another method; start a run "
                                           "with a new name=") from None
        # The sampler as the uninterrupted run has it after the task (its final checkpoint).
        self.base.load_state_dict(_final_objective_state(tdir, task.num_steps))

    def learn(self, task: Task) -> Dict:
        ctx, cfg, method = self.ctx, self.ctx.cfg, self.method
        tdir = ctx.task_dir(task)
        if dist_util.is_main():
            bf.makedirs(tdir)
        self.adapt(task)  # first: a task 0 copied from another run (continual.init_from) is made the adapted model's
        copies_first = self.init_step is not None and task.index == 0
        if copies_first and dist_util.is_main():
            convert = (lambda sd: method.import_weights(ctx.model, sd)) if method.adapts_model else None
            copy_first_task(cfg.continual.init_from, self.init_step, tdir, ctx.logger.log, convert)
        dist_util.barrier()
        self.logger = experiment.make_logger(cfg, tdir)
        # The network in its compute layout before anything copies or runs it (the teacher, a method's
        # before_task): a run resumed after a task holds the restored weights in the default layout, and
        # bf16 convolutions round differently in another layout, so the resumed run would drift.
        precision = experiment.precision_of(cfg, ctx.device)
        precision.to_layout(ctx.model)
        teacher = None
        if task.index > 0 and method.needs_teacher:
            teacher = copy.deepcopy(ctx.model)
            if cfg.continual.teacher_ema and self.ema_state is not None:
                teacher.load_state_dict(self.ema_state[self.rates[0]])
            freeze(teacher)
        t0 = time.time()
        method.before_task(task, teacher)
        t_before = time.time() - t0
        xt, yt = method.task_data(task, *ctx.real_data(task.classes))
        data = InfiniteLoader(xt, yt, cfg.train.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                              seed=step_seed(cfg.seed, task.index, 1) % (2**31), random_flip=cfg.data.random_flip)
        tcfg = dataclasses.replace(cfg.train, total_steps=task.num_steps)
        objective = method.objective(task, self.base)
        loop = TrainLoop(model=ctx.model, data=data, cfg=tcfg, run_dir=tdir, objective=objective,
                         seed=step_seed(cfg.seed, task.index, 2) % (2**31), logger=self.logger, device=ctx.device,
                         hooks=method.hooks(task), init_ema=self.ema_state,
                         export_config={**experiment.export_config(cfg, ctx.info), **export_record(cfg, ctx.info)},
                         tag=f"task {task.index}", precision=precision)
        start_step = loop.step
        t1 = time.time()
        loop.run()
        stop_if_preempted(self.flag, ctx.run_dir, f"during task {task.index}")
        train_sec = time.time() - t1
        self.ema_state = {r: {k: v.detach().clone() for k, v in sd.items()} for r, sd in loop.ema_state_dicts().items()}
        t2 = time.time()
        method.after_task(task)
        t_after = time.time() - t2
        row = {"task": task.index, "classes": " ".join(map(str, task.classes)),
               "seen_classes": len(task.seen_classes), "steps": task.num_steps, "images": len(xt),
               "before_task_sec": round(t_before, 3), "train_sec": round(train_sec, 3),
               "steps_this_run": task.num_steps - start_step,
               "after_task_sec": round(t_after, 3), "precision": loop.precision.name,
               "memory_format": "channels_last" if loop.precision.channels_last else "contiguous",
               "cpu": describe_cpu() if ctx.device.type == "cpu" else ""}
        terms = set(getattr(self.base, "terms", ("loss",))) | set(method.terms)
        row.update({k: round(v, 6) if isinstance(v, float) else v for k, v in _last_terms(tdir, terms).items()})
        row.update(method.task_columns(task))
        reused = first_task_results(cfg, cfg.continual.init_from) if copies_first else None
        if reused is not None:  # the same weights, seeds and settings: the same grid and numbers
            cols, grid = reused
            row.update(cols)
            if grid is not None and dist_util.is_main():
                ckpt.atomic_write_bytes(f"{tdir}/samples.png", ckpt.read_bytes(grid))
            ctx.logger.log(f"task 0: grid and evaluation taken from {cfg.continual.init_from} (same settings)")
        else:
            self._evaluate(task, row)
        return row

    def _evaluate(self, task: Task, row: Dict) -> None:
        """The evaluators' columns into ``row`` and the task's grid, from the EMA weights."""
        ctx, cfg = self.ctx, self.ctx.cfg
        ema_model = copy.deepcopy(ctx.model)
        ema_model.load_state_dict(self.ema_state[self.rates[0]])
        ema_model.eval()
        drawn = []  # each evaluator's samples, handed back beside its columns
        for evaluator in self.evaluators:
            columns, samples = evaluator(ctx, task, ema_model)
            row.update(columns)
            drawn.append(samples)
        if cfg.continual.grid_per_class > 0:
            images = _grid_from_evaluation(ctx, task, drawn)
            if images is None:
                images, _ = task_grid(ctx, task, ema_model, cfg.continual.grid_per_class, cfg.seed)
            if dist_util.is_main():
                n_col = cfg.continual.grid_per_class if cfg.model.class_cond else None
                save_grid(images, f"{ctx.task_dir(task)}/samples.png", nrow=n_col)

    def save(self, task: Task, row: Dict) -> Dict:
        path = f"{self.ctx.task_dir(task)}/method_state.pt"
        return {"files": {"method_state.pt": ckpt.atomic_torch_save(self.method.state_dict(), path)}}

    def finished(self, task: Task, row: Dict) -> None:
        self.ctx.logger.log(f"task {task.index} done: " + ", ".join(f"{k}={v}" for k, v in row.items()))
        self.ctx.logger.log_external({k: v for k, v in row.items() if isinstance(v, (int, float))})  # W&B, TB
        self.logger.close()


def _evaluators(cfg, logger) -> List[Callable]:
    """The evaluation module's evaluator when the config's ``evaluation.enabled`` is true."""
    if not cfg.evaluation.enabled:
        return []
    from ..evaluation.continual import ContinualEvaluator, evaluation_classifier

    return [ContinualEvaluator(cfg, evaluation_classifier(cfg, log=logger.log), log=logger.log)]



def _last_terms(tdir: str, terms) -> Dict[str, float]:
    """The loss terms ``terms`` (the objective's and the method's) of the last logged row of the task's
    progress.csv, and the mean cost per step (for metrics.csv)."""
    rows = read_csv(f"{tdir}/progress.csv")
    if not rows:
        return {}
    out = {}
    # Cost from the whole log, so that a task resumed after a restart reports its real cost.
    secs = [float(r["sec_per_step"]) for r in rows if r.get("sec_per_step") not in ("", None)]
    if secs:
        out["sec_per_step"] = sum(secs) / len(secs)
    for k, v in rows[-1].items():
        if k in terms and v not in ("", None):
            out[f"final_{k}"] = float(v)
    return out


# The sections a continual run reads (scripts warn about the others a config sets).
USES = ("data", "model", "diffusion", "train", "sample", "dist", "continual", "method", "evaluation", "text", "vae", "latent")


def is_continual(cfg, given_sections) -> bool:
    """A config describes a continual run when it sets a ``method`` or a ``continual`` section."""
    return bool(cfg.method) or "continual" in given_sections or "method" in given_sections


def train_continual(cfg) -> int:
    """The continual entry point of image_train.py and continual_train.py: every task, then the
    per-task summary (sample accuracy and FID when evaluated)."""
    ctx = run_continual(cfg)
    if dist_util.is_main():
        from ..evaluation.report import task_summary

        ctx.logger.log("\n" + task_summary(ctx.run_dir))
    ctx.logger.log(f"all tasks done: see {ctx.run_dir}/metrics.csv and task_*/samples.png; a report: "
                   f"python scripts/report.py {ctx.run_dir}")
    ctx.logger.close()
    dist_util.cleanup()
    return 0
