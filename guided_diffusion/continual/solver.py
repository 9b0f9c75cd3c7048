"""The continual classifier ("solver"): class-incremental training with replay from the diffusion model.

Per task i (REFERENCE.md §2.4 GUIDE, §1.4 Masip):
- a batch is B/(i+1) real images of task i and B*i/(i+1) replay images of old classes, sampled
  from the diffusion model after task i-1 (its continual run folder), regenerated every
  ``generation_interval`` steps;
- ``replay``: ``plain`` (hard labels = the conditioning class), ``soft`` (targets = the previous
  classifier's logits on the old classes at temperature T, loss (1/(i+1)) CE_real + (i/(i+1)) T^2
  KL(p_teacher || p_student), the standard KD direction, not Masip's reversed one:
  ``soft_target_kd``), ``guided`` (GUIDE: the sampling of an old class y is guided, on the
  predicted x0, toward the most likely *new* class of the classifier being trained, with a
  per-sample scale ~ U[scale_min, scale_max]; with ``noised_classifier`` a second classifier, trained
  on q_sample(x, t) of the same batches, guides on x_t instead: ADM's classic guidance, GUIDE's
  ``train_noised_classifier``), ``joint`` (real data of all seen classes), ``none`` (fine-tuning);
- SGD with momentum and weight decay, lr linearly decayed within the task; logits outside the
  classes seen so far are masked during training (``trim_logits``);
- after the task: accuracy on each seen task's test split (argmax over all logits), average
  accuracy and forgetting, a row in ``metrics.csv``.
Resume is per task: finished tasks are skipped and the classifier restored; an unfinished task restarts.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Dict, List, Optional

import blobfile as bf
import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from .. import dist_util, experiment
from ..classifiers import create_classifier_net
from ..config import ConfigError
from ..data import InfiniteLoader
from ..sampling import sample_batch
from ..train_util import NonFiniteError, step_seed
from .loop import _final_weights, append_metrics
from .scenario import Scenario, Task, build_scenario, select

REPLAYS = ("none", "joint", "plain", "soft", "guided")


def soft_target_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, old_classes: List[int],
                   T: float) -> torch.Tensor:
    """T^2 KL(p_teacher || p_student), averaged over rows: the standard KD direction (not Masip's
    reversed cross-entropy, REFERENCE.md §1.4). The teacher (the classifier after the previous task)
    gives a distribution over the old classes only; the student's is over all its logits (those of
    unseen classes may be -inf, trimmed), so mass it puts on the new classes counts against it."""
    old = torch.as_tensor(old_classes, device=student_logits.device)
    log_pt = F.log_softmax(teacher_logits.float().index_select(1, old) / T, -1)
    log_ps = F.log_softmax(student_logits.float() / T, -1).index_select(1, old)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * T * T


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


# ------------------------------------------------------------------ augmentation


def augment(x: torch.Tensor, kinds: List[str], gen: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4), horizontal flip, rotation (±30°), brightness/contrast jitter, erasing."""
    n = x.shape[0]
    if "crop" in kinds:
        pad = F.pad(x, (4, 4, 4, 4), value=-1.0)
        dx, dy = torch.randint(0, 9, (2, n), generator=gen)
        x = torch.stack([pad[i, :, dy[i] : dy[i] + x.shape[2], dx[i] : dx[i] + x.shape[3]] for i in range(n)])
    if "flip" in kinds:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if "rotation" in kinds:
        ang = (torch.rand(n, generator=gen) * 2 - 1) * math.pi / 6
        cos, sin = ang.cos(), ang.sin()
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1
    if "jitter" in kinds:
        b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
        c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(-1, 1)
    if "erasing" in kinds:
        h, w = x.shape[2:]
        x = x.clone()
        for i in range(n):
            if torch.rand(1, generator=gen).item() < 0.5:
                eh, ew = [max(1, int(s * (0.2 + 0.3 * torch.rand(1, generator=gen).item()))) for s in (h, w)]
                y0 = torch.randint(0, h - eh + 1, (1,), generator=gen).item()
                x0 = torch.randint(0, w - ew + 1, (1,), generator=gen).item()
                x[i, :, y0 : y0 + eh, x0 : x0 + ew] = 0.0
    return x


# ------------------------------------------------------------------ guidance


def guide_cond_fn(clf, prev_clf, seen_mask, new_classes, old_mask, scales, s):
    """GUIDE's guidance on x̂0 (REFERENCE.md §2.4): returns scale * grad_x log p(target | x̂0(x_t)).

    ``use_new_grad`` with ``guid_to_new_classes``: target = the most likely new class under the
    current classifier; without it: away from the conditioning class y. ``use_old_grad``: toward y
    under the previous classifier.
    """
    new = torch.as_tensor(new_classes, device=seen_mask.device)

    def cond_fn(x, t, pred_xstart=None, y=None, **kwargs):
        if s.use_new_grad:
            logits = clf(pred_xstart).float().masked_fill(~seen_mask, float("-inf"))
            logp = F.log_softmax(logits, dim=-1)
            if s.guid_to_new_classes:
                target = new[logits[:, new].argmax(dim=1)]
                obj = logp[torch.arange(len(x)), target]
            else:
                obj = -logp[torch.arange(len(x)), y]  # push away from the old label
        else:
            logits = prev_clf(pred_xstart).float().masked_fill(~old_mask, float("-inf"))
            obj = F.log_softmax(logits, dim=-1)[torch.arange(len(x)), y]
        grad = torch.autograd.grad(obj.sum(), x)[0]
        return scales.to(x.device).view(-1, 1, 1, 1) * grad

    cond_fn.needs_pred_xstart = True
    return cond_fn


def noised_cond_fn(nclf, seen_mask, new_classes, scales):
    """ADM's classic guidance with GUIDE's target: scale * grad_{x_t} log p(target | x_t) from the noised
    classifier applied to x_t itself, target = its most likely new class. No gradient through the UNet."""
    new = torch.as_tensor(new_classes, device=seen_mask.device)

    def cond_fn(x, t, y=None, **kwargs):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = nclf(x).float().masked_fill(~seen_mask, float("-inf"))
            target = new[logits[:, new].argmax(dim=1)]
            obj = F.log_softmax(logits, dim=-1)[torch.arange(len(x)), target]
            grad = torch.autograd.grad(obj.sum(), x)[0]
        return scales.to(x.device).view(-1, 1, 1, 1) * grad

    return cond_fn


# ------------------------------------------------------------------ the solver loop


class Solver:
    def __init__(self, cfg, x, y, xt, yt, info, scenario: Scenario, device, run_dir: str, logger):
        s = cfg.solver
        if s.replay not in REPLAYS:
            raise ConfigError(f"solver.replay {s.replay!r} is not one of {', '.join(REPLAYS)}")
        if s.replay in ("plain", "soft", "guided") and not cfg.model.class_cond:
            raise ConfigError(f"solver.replay {s.replay} needs a class-conditional diffusion model (model.class_cond)")
        if s.use_old_grad and s.use_new_grad:
            raise ConfigError("solver.use_old_grad and solver.use_new_grad cannot both be true (as in GUIDE)")
        if s.noised_classifier and s.replay != "guided":
            raise ConfigError(f"solver.noised_classifier is a guidance option: it needs solver.replay=guided, not "
                              f"{s.replay!r}")
        self.cfg, self.s = cfg, s
        self.x, self.y, self.xt, self.yt = x, y, xt, yt
        self.info, self.scenario, self.device = info, scenario, device
        self.run_dir, self.logger = run_dir, logger
        self.diffusion_run = s.diffusion_run or experiment.run_dir_of(cfg)
        torch.manual_seed(cfg.seed + 2)
        self.clf = create_classifier_net(s.arch, info.num_classes, info.channels).to(device)
        # GUIDE's train_noised_classifier: a second classifier, trained on noised batches, guides on x_t
        self.nclf = create_classifier_net(s.arch, info.num_classes, info.channels).to(device) \
            if s.noised_classifier else None
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
        _, emas = _final_weights(tdir)
        model = experiment.build_model(self.cfg, self.info)
        model.load_state_dict(emas[float(self.cfg.train.ema_rate.split(",")[0])])
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def generate(self, model, diffusion, task: Task, n: int, gen: torch.Generator, prev_clf) -> tuple:
        """n replay images of old classes (uniform labels), guided toward the new classes if asked."""
        s = self.s
        old = torch.as_tensor(task.old_classes)
        y = old[torch.randint(0, len(old), (n,), generator=gen)]
        seen_mask = torch.zeros(self.info.num_classes, dtype=torch.bool, device=self.device)
        seen_mask[list(task.seen_classes)] = True
        old_mask = torch.zeros_like(seen_mask)
        old_mask[list(task.old_classes)] = True
        start = time.perf_counter()
        chunks = []
        for i in range(0, n, s.guidance_batch if s.replay == "guided" else n):
            yc = y[i : i + (s.guidance_batch if s.replay == "guided" else n)]
            noise = torch.randn((len(yc), *self.info.shape), generator=gen)
            cond_fn = None
            if s.replay == "guided":
                scales = s.scale_min + (s.scale_max - s.scale_min) * torch.rand(len(yc), generator=gen)
                self.clf.eval()
                if self.nclf is not None:
                    self.nclf.eval()
                    cond_fn = noised_cond_fn(self.nclf, seen_mask, task.classes, scales)
                else:
                    cond_fn = guide_cond_fn(self.clf, prev_clf, seen_mask, task.classes, old_mask, scales, s)
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            xs = sample_batch(model, diffusion, (len(yc), *self.info.shape), y=yc, class_cond=True,
                              use_ddim=s.use_ddim, cond_fn=cond_fn, noise=noise, device=self.device)
            chunks.append(xs.detach().clone())
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

    def train_task(self, task: Task, prev_clf) -> dict:
        s = self.s
        i = task.index
        gen_mode = s.replay in ("plain", "soft", "guided") and i > 0
        classes = task.seen_classes if s.replay == "joint" else task.classes
        idx = torch.as_tensor(select(self.y.numpy(), classes))
        n_real = s.batch_size // (i + 1) if gen_mode else s.batch_size
        n_gen = (s.batch_size // (i + 1)) * i if gen_mode else 0
        data = InfiniteLoader(self.x[idx], self.y[idx], n_real, seed=step_seed(self.cfg.seed, i, 3) % (2**31))
        steps = s.init_num_steps if i == 0 else s.num_steps
        base_lr = s.init_lr if i == 0 else s.lr
        opt = _optimizer(self.clf.parameters(), s, base_lr)
        seen_mask = torch.zeros(self.info.num_classes, dtype=torch.bool, device=self.device)
        seen_mask[list(task.seen_classes)] = True
        kinds = [k.strip() for k in s.augment.split(",") if k.strip()]
        model = diffusion = None
        if gen_mode:
            model = self.diffusion_after(i - 1)
            diffusion = experiment.build_diffusion(self.cfg, s.respacing)
        x_gen = y_gen = soft_gen = None
        if self.nclf is not None:  # the noised classifier learns the same batches at random noise levels
            noiser = experiment.build_diffusion(self.cfg, "")
            opt_n = _optimizer(self.nclf.parameters(), s, base_lr)
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, i, 4) % (2**63))
        start = time.time()
        losses = []
        bar = self.logger.progress_bar(total=steps, desc=f"solver task {i}")
        for step in range(steps):
            lr = base_lr * (1 - step / steps)
            xr, yr = next(data)
            xr, yr = xr.to(self.device), yr.to(self.device)
            if gen_mode and step % s.generation_interval == 0:
                x_gen, y_gen = self.generate(model, diffusion, task, n_gen, gen, prev_clf)
                if s.replay == "soft":
                    with torch.no_grad():
                        soft_gen = prev_clf(x_gen).float()
            xb = torch.cat([xr, x_gen]) if gen_mode else xr
            labels = torch.cat([yr, y_gen]) if gen_mode else yr
            if kinds:
                xb = augment(xb.cpu(), kinds, gen).to(self.device)
            logits = self.clf(xb).float()
            if s.trim_logits:
                logits = logits.masked_fill(~seen_mask, float("-inf"))
            if s.replay == "soft" and gen_mode:
                T = s.temperature
                real = F.cross_entropy(logits[:n_real], yr)
                kd = soft_target_kd(logits[n_real:], soft_gen, list(task.old_classes), T)
                loss = real / (i + 1) + kd * i / (i + 1)
            else:
                loss = F.cross_entropy(logits, labels)
            _update(opt, loss, lr, f"solver ({s.replay} replay), task {i}, step {step + 1}")
            losses.append(loss.item())
            if self.nclf is not None:
                t = torch.randint(0, noiser.num_timesteps, (len(xb),), generator=gen).to(self.device)
                xn = noiser.q_sample(xb.detach(), t, noise=torch.randn(xb.shape, generator=gen).to(self.device))
                n_logits = self.nclf(xn).float()
                if s.trim_logits:
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
        return {"train_sec": round(time.time() - start, 2), "sec_per_step": round((time.time() - start) / steps, 4),
                "final_loss": round(float(np.mean(losses[-20:])), 5), "real_per_batch": n_real, "replay_per_batch": n_gen}

    def run(self) -> Dict[int, Dict[int, float]]:
        prev_clf = None
        first = 0
        while first < len(self.scenario.tasks) and bf.exists(f"{self.run_dir}/task_{first}.done.json"):
            first += 1
        if first > 0:
            self.clf.load_state_dict(ckpt.load_torch(f"{self.run_dir}/classifier_task_{first - 1}.pt"))
            if self.nclf is not None:
                self.nclf.load_state_dict(ckpt.load_torch(f"{self.run_dir}/noised_classifier_task_{first - 1}.pt"))
            for k in range(first):
                row = json.loads(ckpt.read_bytes(f"{self.run_dir}/task_{k}.done.json"))
                self.acc[k] = {int(j): v for j, v in row["acc"].items()}
            self.logger.log(f"solver: tasks 0..{first - 1} already finished; continuing with task {first}")
        for task in self.scenario.tasks[first:]:
            if task.index > 0:
                prev_clf = copy.deepcopy(self.clf).eval()
            self.gen_sec, self.gen_images = 0.0, 0
            row = self.train_task(task, prev_clf)
            acc = self.evaluate(task)
            self.acc[task.index] = acc
            avg = float(np.mean(list(acc.values())))
            forget = [max(self.acc[l][j] for l in range(j, task.index)) - acc[j] for j in range(task.index)]
            row.update({"task": task.index, "replay": self.s.replay, "avg_acc": round(avg, 4),
                        "forgetting": round(float(np.mean(forget)), 4) if forget else 0.0,
                        "gen_sec": round(self.gen_sec, 2), "gen_images": self.gen_images})
            row.update({f"acc_task{j}": round(a, 4) for j, a in acc.items()})
            if dist_util.is_main():
                ckpt.atomic_torch_save(self.clf.state_dict(), f"{self.run_dir}/classifier_task_{task.index}.pt")
                if self.nclf is not None:  # before the done file: a finished task has both
                    ckpt.atomic_torch_save(self.nclf.state_dict(),
                                           f"{self.run_dir}/noised_classifier_task_{task.index}.pt")
                append_metrics(f"{self.run_dir}/metrics.csv", row)
                ckpt.atomic_write_text(f"{self.run_dir}/task_{task.index}.done.json",
                                       json.dumps({**row, "acc": {str(k): v for k, v in acc.items()}}, indent=2))
            self.logger.log(f"solver task {task.index}: avg acc {avg:.4f}; " +
                            ", ".join(f"task {j}: {a:.3f}" for j, a in acc.items()) +
                            (f"; replay generation {self.gen_sec:.1f}s for {self.gen_images} images" if self.gen_images else ""))
        return self.acc


def run_solver(cfg) -> Solver:
    device = experiment.init_process(cfg)
    if dist_util.get_world_size() > 1:
        raise ConfigError("the solver runs in one process (its cost is the replay generation); launch it without mpiexec")
    run_dir = f"{experiment.run_dir_of(cfg)}/solver_{cfg.solver.replay}" + ("_noised" if cfg.solver.noised_classifier else "")
    logger = experiment.setup_run(cfg, run_dir=run_dir)
    x, y, info = experiment.load_split(cfg, "train")
    xt, yt, _ = experiment.load_split(cfg, "test")
    scenario = build_scenario(cfg.continual, info.num_classes)
    solver = Solver(cfg, x, y, xt, yt, info, scenario, device, run_dir, logger)
    solver.run()
    logger.close()
    return solver
