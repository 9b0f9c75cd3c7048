"""The continual classifier ("solver") on the shared task loop (``continual.tasks``): per task, a
batch of real images of the task's classes and replayed images of the old classes (the replay part
``solver.replay`` names, ``continual.solver.replays``), trained with SGD or Adam at a linearly
decayed learning rate; then accuracy on every seen task's test split, average accuracy and
forgetting (``evaluation.class_metrics``), and how the classifier after the previous task judges
the replay. Resume is per task: finished tasks are skipped and the classifier restored; an
unfinished task restarts; SIGTERM/SIGUSR1 stop the run between tasks.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Dict, List, Tuple

import blobfile as bf
import numpy as np
import torch
import torch.nn.functional as F

from ... import experiment
from ...classifiers.nets import create_classifier_net
from ...data import InfiniteLoader
from ...evaluation.class_metrics import accuracy_matrix, average_accuracy, forgetting
from ...runtime import dist_util
from ...runtime import checkpoint as ckpt
from ...runtime.config import ConfigError
from ...runtime.seeding import step_seed
from ...sampling.config import is_ddim
from ...sampling.sample_sets import sample_batch
from ...runtime.preemption import PreemptionFlag
from ...train_util import NonFiniteError, parse_ema_rates
from ..adaptation import adapted_model
from ..loop import USES as CONTINUAL_USES
from ..loop import final_weights
from ..scenario import Scenario, Task, build_scenario, select
from ..tasks import TaskLearner, resume_point, run_tasks
from .augment import augment
from .base import trims_logits
from .guidance import replay_judgement
from .replays import batch_split, build_replay, check_solver


def _optimizer(params, s, lr: float) -> torch.optim.Optimizer:
    """The solver's optimizer (``solver.optimizer``): Adam, or SGD with momentum; both with weight decay."""
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, what: str) -> None:
    """One step at ``lr``; a non-finite loss stops the run, naming ``what`` (task and step)."""
    if not torch.isfinite(loss):
        raise NonFiniteError(f"{what}: the loss is {loss.item()}; nothing of this task was saved")
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


class Solver(TaskLearner):
    log_prefix = "solver: "

    def __init__(self, cfg, x, y, xt, yt, info, scenario: Scenario, device, run_dir: str, logger):
        s = cfg.solver
        check_solver(s, cfg)
        self.replay = build_replay(s)
        self.trim_logits = trims_logits(s)
        self.cfg, self.s = cfg, s
        self.x, self.y, self.xt, self.yt = x, y, xt, yt
        self.info, self.scenario, self.device = info, scenario, device
        self.run_dir, self.logger = run_dir, logger
        self.diffusion_run = s.diffusion_run or experiment.run_dir_of(cfg)
        torch.manual_seed(cfg.seed + 2)
        self.clf = create_classifier_net(s.arch, info.num_classes, info.channels, image_size=info.image_size).to(device)
        # GUIDE's train_noised_classifier: a second, time-conditioned classifier, trained on noised
        # batches, guides on x_t. Deliberate difference: GUIDE trains its one classifier on noised
        # batches; we keep the solver clean (its test accuracy is the result) and add this one.
        self.nclf = create_classifier_net(s.arch, info.num_classes, info.channels, time_conditioned=True,
                                          image_size=info.image_size).to(device) if s.guided.noised_classifier else None
        self.acc: Dict[int, Dict[int, float]] = {}
        self.gen_sec = 0.0
        self.gen_images = 0

    # -------------------------------------------------------------- pieces

    def diffusion_after(self, task_index: int):
        """The EMA diffusion model of the continual run after task ``task_index`` (eval mode)."""
        tdir = f"{self.diffusion_run}/task_{task_index}"
        if not bf.exists(f"{tdir}/task_done.json"):
            raise FileNotFoundError(
                f"{tdir} is not a finished task of a continual diffusion run: run scripts/continual_train.py "
                f"with the same config first (or set solver.diffusion_run)"
            )
        _, emas = final_weights(tdir)
        info = experiment.model_info(self.cfg, self.info)
        model = adapted_model(self.cfg, info, experiment.build_model(self.cfg, info))  # LoRA, the ensemble: as trained
        model.load_state_dict(emas[parse_ema_rates(self.cfg.train.ema_rate)[0]])
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def masks(self, task: Task) -> Tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks over the logits: the classes seen so far, and the old classes."""
        seen_mask = torch.zeros(self.info.num_classes, dtype=torch.bool, device=self.device)
        seen_mask[list(task.seen_classes)] = True
        old_mask = torch.zeros_like(seen_mask)
        old_mask[list(task.old_classes)] = True
        return seen_mask, old_mask

    def generate(self, model, diffusion, task: Task, n: int, gen: torch.Generator, prev_clf, prev_nclf=None) -> tuple:
        """n replay images of old classes (uniform labels), guided as the replay part says."""
        old = torch.as_tensor(task.old_classes)
        y = old[torch.randint(0, len(old), (n,), generator=gen)]
        seen_mask, old_mask = self.masks(task)
        nets = {"clf": self.clf, "prev": prev_clf, "noised": self.nclf, "prev_noised": prev_nclf}
        chunk = self.s.guided.guidance_batch if self.replay.guides else n
        codec = experiment.latent_codec(self.cfg)  # latent diffusion: the replay is decoded to images
        shape = experiment.model_info(self.cfg, self.info).shape
        start = time.perf_counter()
        chunks = []
        if self.replay.guides:  # the classifiers guide in eval mode
            self.clf.eval()
            if self.nclf is not None:
                self.nclf.eval()
        for i in range(0, n, chunk):
            yc = y[i : i + chunk]
            noise = torch.randn((len(yc), *shape), generator=gen)
            cond_fn = self.replay.cond_fn(task, len(yc), gen, nets, seen_mask, old_mask)
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            xs = sample_batch(model, diffusion, (len(yc), *shape), y=yc, class_cond=self.cfg.model.class_cond,
                              ddim=is_ddim(self.s.sampler), cond_fn=cond_fn, noise=noise, device=self.device,
                              clip_denoised=codec is None, precision=experiment.precision_of(self.cfg, self.device))
            chunks.append((codec.decode(xs) if codec is not None else xs).detach().clone())
        self.clf.train()
        if self.nclf is not None:
            self.nclf.train()
        self.gen_sec += time.perf_counter() - start
        self.gen_images += n
        return torch.cat(chunks), y.to(self.device)

    @torch.no_grad()
    def evaluate(self, task: Task) -> Dict[int, float]:
        """Accuracy on each seen task's test split, argmax over all logits."""
        self.clf.eval()
        out = {}
        for past in self.scenario.tasks[: task.index + 1]:
            idx = select(self.yt.numpy(), past.classes)
            correct = 0
            for i in range(0, len(idx), self.s.eval_batch_size):
                b = torch.as_tensor(idx[i : i + self.s.eval_batch_size])
                pred = self.clf(self.xt[b].to(self.device)).argmax(-1).cpu()
                correct += int((pred == self.yt[b]).sum())
            out[past.index] = correct / max(1, len(idx))
        self.clf.train()
        return out

    # -------------------------------------------------------------- training

    def train_task(self, task: Task, prev_clf, prev_nclf=None) -> dict:
        s, replay = self.s, self.replay
        i = task.index
        gen_mode = replay.from_generator and i > 0
        idx = torch.as_tensor(select(self.y.numpy(), replay.train_classes(task)))
        n_real, n_gen = batch_split(s.mixing, s.batch_size, i) if gen_mode else (s.batch_size, 0)
        data = InfiniteLoader(self.x[idx], self.y[idx], n_real, seed=step_seed(self.cfg.seed, i, 3) % (2**31))
        steps = s.init_num_steps if i == 0 else s.num_steps
        base_lr = s.init_lr if i == 0 else s.lr
        opt = _optimizer(self.clf.parameters(), s, base_lr)
        seen_mask, old_mask = self.masks(task)
        judged: List[Tuple[float, float]] = []
        kinds = [k.strip() for k in s.augment.split(",") if k.strip()]
        model = diffusion = None
        if gen_mode:
            model = self.diffusion_after(i - 1)
            diffusion = experiment.build_diffusion(self.cfg, s.sampler)
        x_gen = y_gen = soft_gen = None
        if self.nclf is not None:  # the noised classifier learns the same batches at random noise levels
            noiser = experiment.build_diffusion(self.cfg, "")
            opt_n = _optimizer(self.nclf.parameters(), s, base_lr)
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, i, 4) % (2**63))
        start = time.time()
        losses = []
        bar = self.logger.progress_bar(total=steps, desc=f"solver task {i}")
        for step in range(steps):
            lr = base_lr * (1 - step / steps) if s.lr_schedule == "linear" else base_lr
            xr, yr = next(data)
            xr, yr = xr.to(self.device), yr.to(self.device)
            if gen_mode and step % s.generation_interval == 0:
                x_gen, y_gen = self.generate(model, diffusion, task, n_gen, gen, prev_clf, prev_nclf)
                agree, entropy = replay_judgement(prev_clf, x_gen, y_gen, old_mask)
                # an unconditional generator's images have no intended class: only the entropy is meaningful
                judged.append((agree if self.cfg.model.class_cond else float("nan"), entropy))
                if replay.soft_targets:
                    with torch.no_grad():
                        soft_gen = prev_clf(x_gen).float()
            xb = torch.cat([xr, x_gen]) if gen_mode else xr
            labels = torch.cat([yr, y_gen]) if gen_mode else yr
            if kinds:
                xb = augment(xb.cpu(), kinds, gen).to(self.device)
            logits = self.clf(xb).float()
            if self.trim_logits:
                logits = logits.masked_fill(~seen_mask, float("-inf"))
            loss = replay.loss(logits, labels, n_real, soft_gen, task)
            _update(opt, loss, lr, f"solver ({s.replay} replay), task {i}, step {step + 1}")
            losses.append(loss.item())
            if self.nclf is not None:
                t = torch.randint(0, noiser.num_timesteps, (len(xb),), generator=gen).to(self.device)
                xn = noiser.q_sample(xb.detach(), t, noise=torch.randn(xb.shape, generator=gen).to(self.device))
                n_logits = self.nclf(xn, noiser.model_timesteps(t)).float()  # the t a cond_fn receives
                if self.trim_logits:
                    n_logits = n_logits.masked_fill(~seen_mask, float("-inf"))
                _update(opt_n, F.cross_entropy(n_logits, labels), lr,
                        f"solver noised classifier, task {i}, step {step + 1}")
            bar.update(1)
            if (step + 1) % s.log_interval == 0:
                self.logger.logkv("task", i)
                self.logger.logkv("step", step + 1)
                self.logger.logkv("loss", float(np.mean(losses[-s.log_interval:])))
                self.logger.dumpkvs()
        bar.close()
        row = {"train_sec": round(time.time() - start, 2), "sec_per_step": round((time.time() - start) / steps, 4),
               "final_loss": round(float(np.mean(losses[-20:])), 5), "real_per_batch": n_real, "replay_per_batch": n_gen}
        if judged:
            if self.cfg.model.class_cond:
                row["replay_label_agree"] = round(float(np.mean([a for a, _ in judged])), 4)
            row["replay_old_entropy"] = round(float(np.mean([e for _, e in judged])), 4)
        return row

    # -------------------------------------------------------------- the task loop's parts (TaskLearner)

    def done_path(self, task: Task) -> str:
        return f"{self.run_dir}/task_{task.index}.done.json"

    def restore(self, task: Task) -> None:
        self.clf.load_state_dict(ckpt.load_torch(f"{self.run_dir}/classifier_task_{task.index}.pt"))
        if self.nclf is not None:
            self.nclf.load_state_dict(ckpt.load_torch(f"{self.run_dir}/noised_classifier_task_{task.index}.pt"))
        for k in range(task.index + 1):
            row = json.loads(ckpt.read_bytes(self.done_path(self.scenario.tasks[k])))
            self.acc[k] = {int(j): v for j, v in row["acc"].items()}

    def learn(self, task: Task) -> Dict:
        prev_clf = prev_nclf = None
        if task.index > 0:
            prev_clf = copy.deepcopy(self.clf).eval()
            prev_nclf = copy.deepcopy(self.nclf).eval() if self.nclf is not None else None
        self.gen_sec, self.gen_images = 0.0, 0
        row = self.train_task(task, prev_clf, prev_nclf)
        acc = self.evaluate(task)
        self.acc[task.index] = acc
        matrix = accuracy_matrix([self.acc[k] for k in range(task.index + 1)])
        row.update({"task": task.index, "replay": self.s.replay, "avg_acc": round(average_accuracy(matrix), 4),
                    "forgetting": round(forgetting(matrix), 4),
                    "gen_sec": round(self.gen_sec, 2), "gen_images": self.gen_images})
        row.update({f"acc_task{j}": round(a, 4) for j, a in acc.items()})
        return row

    def save(self, task: Task, row: Dict) -> Dict:
        ckpt.atomic_torch_save(self.clf.state_dict(), f"{self.run_dir}/classifier_task_{task.index}.pt")
        if self.nclf is not None:  # before the done file: a finished task has both
            ckpt.atomic_torch_save(self.nclf.state_dict(), f"{self.run_dir}/noised_classifier_task_{task.index}.pt")
        return {"acc": {str(k): v for k, v in self.acc[task.index].items()}}

    def finished(self, task: Task, row: Dict) -> None:
        acc = self.acc[task.index]
        self.logger.log(f"solver task {task.index}: avg acc {row['avg_acc']:.4f}; " +
                        ", ".join(f"task {j}: {a:.3f}" for j, a in acc.items()) +
                        (f"; replay generation {self.gen_sec:.1f}s for {self.gen_images} images"
                         if self.gen_images else ""))

    def run(self, flag=None) -> Dict[int, Dict[int, float]]:
        """Every task not finished yet (``flag``: a PreemptionFlag that stops the run between tasks)."""
        first = resume_point(self.scenario.tasks, self, self.logger.log)
        run_tasks(self.scenario.tasks[first:], self, self.run_dir, flag)
        return self.acc


# The sections the classifier's script reads: the continual run's (its config describes the diffusion
# run whose models replay the old classes) and the solver's.
USES = CONTINUAL_USES + ("solver",)


def run_solver(cfg) -> Solver:
    """Train the classifier task after task (the solver section's checks ran at load, and run again in
    ``Solver``)."""
    device = experiment.init_process(cfg)
    if dist_util.get_world_size() > 1:
        raise ConfigError("the solver runs in one process (its cost is the replay generation); launch it without mpiexec")
    noised = "_noised" if cfg.solver.guided.noised_classifier else ""
    run_dir = f"{experiment.run_dir_of(cfg)}/solver_{cfg.solver.replay}{noised}"

    logger = experiment.setup_run(cfg, run_dir=run_dir)
    x, y, info = experiment.load_split(cfg, "train")
    xt, yt, _ = experiment.load_split(cfg, "test")
    scenario = build_scenario(cfg.continual, info.num_classes, info.task_classes)
    solver = Solver(cfg, x, y, xt, yt, info, scenario, device, run_dir, logger)
    flag = PreemptionFlag()
    try:
        solver.run(flag)
    finally:
        flag.close()
    logger.close()
    return solver
