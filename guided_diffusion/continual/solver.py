"""The continual classifier ("solver"): class-incremental training with replay from the diffusion model.

Per task i (GUIDE: Cywinski et al., cywinski/guide; Masip et al. 2023, Atenrev/diffusion_continual_learning):
- a batch is B/(i+1) real images of task i and B*i/(i+1) replay images of old classes, sampled
  from the diffusion model after task i-1 (its continual run folder), regenerated every
  ``generation_interval`` steps;
- ``replay``: ``plain`` (hard labels = the conditioning class), ``soft`` (Masip et al.'s
  ``WeightedSoftGenerativeReplay``, exactly: targets = all logits of the classifier after task i-1,
  loss (1/(i+1)) CE_real + (i/(i+1)) T^2 mean(-sum softmax(student/T) log softmax(teacher/T)),
  their "reversed" soft cross-entropy: ``masip_soft_loss``), ``guided`` (GUIDE: the sampling of an
  old class y is guided by ``guide_cond_fn`` with GUIDE's flags, by default toward the most likely
  *new* class of the classifier being trained, on the predicted x0, with a per-sample scale
  ~ U[scale_min, scale_max]; with ``noised_classifier`` a second, time-conditioned classifier,
  trained on q_sample(x, t) of the same batches with t, guides on x_t instead: ADM's classic
  guidance, GUIDE's ``train_noised_classifier``), ``joint`` (real data of all seen classes),
  ``none`` (fine-tuning);
- SGD with momentum and weight decay (GUIDE) or Adam (Masip), lr linearly decayed within the task;
  logits outside the classes seen so far are masked during training (``trim_logits``; unset: GUIDE's
  trimming, except soft replay, which is Masip's untrimmed recipe);
- after the task: accuracy on each seen task's test split (argmax over all logits), average
  accuracy and forgetting, and how the classifier after task i-1 judges the replay (the share of
  replayed images whose argmax over the old classes is the conditioning class, and its mean
  entropy over them), a row in ``metrics.csv``.
Resume is per task: finished tasks are skipped and the classifier restored; an unfinished task restarts.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Dict, List, Tuple

import blobfile as bf
import numpy as np
import torch
import torch.nn.functional as F

from .. import dist_util, experiment
from ..classifiers.nets import create_classifier_net
from ..data import InfiniteLoader
from ..respace import sampler_of
from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError, parse_ema_rates
from ..runtime.seeding import step_seed
from ..sampling.sample_sets import sample_batch
from ..train_util import NonFiniteError
from .loop import append_metrics, final_weights
from .scenario import Scenario, Task, build_scenario, select

REPLAYS = ("none", "joint", "plain", "soft", "soft_kd", "guided")
FROM_GENERATOR = ("plain", "soft", "soft_kd", "guided")  # the replays drawn from the diffusion model
SOFT_TARGETS = ("soft", "soft_kd")  # the replays whose targets are the previous classifier's logits


def masip_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Masip et al.'s soft replay loss, exactly (their solver's distillation loss): T^2 times the row mean of
    -sum_c softmax(student/T)_c log softmax(teacher/T)_c over all logits of the classifier after the
    previous task. The student's softmax multiplies the teacher's log-softmax (their "reversed" soft
    cross-entropy): minimising it moves the student's mass to the teacher's most likely class, so
    it acts as a confidence-weighted pseudo-label. Student logits trimmed to -inf add nothing."""
    p_student = F.softmax(student_logits.float() / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return -(p_student * log_p_teacher).sum(-1).mean() * T * T


def soft_target_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, old_classes: List[int],
                   T: float) -> torch.Tensor:
    """``soft_kd`` replay (not Masip's): T^2 KL(p_teacher || p_student), the standard distillation
    direction, averaged over rows. The teacher gives a distribution over the old classes only; the
    student's is over all its logits (those of unseen classes may be -inf, trimmed), so mass it puts
    on the new classes counts against it."""
    old = torch.as_tensor(old_classes, device=student_logits.device)
    log_pt = F.log_softmax(teacher_logits.float().index_select(1, old) / T, -1)
    log_ps = F.log_softmax(student_logits.float() / T, -1).index_select(1, old)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * T * T


def trims_logits(s) -> bool:
    """``solver.trim_logits``, or when unset: true (GUIDE), except soft replay (Masip's solver is untrimmed)."""
    return s.replay != "soft" if s.trim_logits is None else bool(s.trim_logits)


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


def guide_cond_fn(clf, prev_clf, seen_mask, new_classes, old_mask, scales, s, noised: bool = False):
    """GUIDE's guidance function with its flags' semantics (cywinski/guide); returns
    ``scale * grad log-objective`` per sample, or None when neither gradient is asked (GUIDE then
    returns a zero gradient: plain sampling).

    - ``use_new_grad`` with ``guid_to_new_classes``: log p_clf(target | x), target = the new class
      with the largest logit of the classifier being trained (toward the current decision region);
    - ``use_new_grad`` alone: -log p_clf(y | x), away from the conditioning old class y;
    - ``use_old_grad``: log p_prev(y | x) under the classifier after the previous task, over the old
      classes (toward y); ``negate_old_grad`` flips its sign;
    - both: refused, as GUIDE (its ``NotImplementedError``).

    x is the predicted x̂0(x_t), so the gradient flows through the diffusion network, or, when
    ``noised``, x_t itself, with each classifier given the timestep (ADM's classic guidance,
    GUIDE's ``train_noised_classifier``). ``trim_logits``: logits outside the classes seen so far
    (the old classes for the previous classifier) are masked, as GUIDE slices them.
    """
    if s.use_old_grad and s.use_new_grad:
        raise ConfigError("solver.use_old_grad and solver.use_new_grad cannot both be true (as in GUIDE)")
    if not (s.use_old_grad or s.use_new_grad):
        return None
    trim = trims_logits(s)
    new = torch.as_tensor(list(new_classes), device=seen_mask.device)

    def logits_of(net, x_in, t, mask):
        out = (net(x_in, t) if noised else net(x_in)).float()
        return out.masked_fill(~mask, float("-inf")) if trim else out

    def objective(x_in, t, y):
        rows = torch.arange(len(y), device=y.device)
        if s.use_old_grad:
            obj = F.log_softmax(logits_of(prev_clf, x_in, t, old_mask), dim=-1)[rows, y]
            return -obj if s.negate_old_grad else obj
        logits = logits_of(clf, x_in, t, seen_mask)
        logp = F.log_softmax(logits, dim=-1)
        if s.guid_to_new_classes:
            return logp[rows, new[logits[:, new].argmax(dim=1)]]
        return -logp[rows, y]

    def scaled(grad):
        return scales.to(grad.device).view(-1, 1, 1, 1) * grad

    if noised:
        def cond_fn(x, t, y=None, **kwargs):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                return scaled(torch.autograd.grad(objective(x_in, t, y).sum(), x_in)[0])
        return cond_fn

    def cond_fn(x, t, pred_xstart=None, y=None, **kwargs):
        return scaled(torch.autograd.grad(objective(pred_xstart, t, y).sum(), x)[0])

    cond_fn.needs_pred_xstart = True
    return cond_fn


@torch.no_grad()
def replay_judgement(prev_clf, x: torch.Tensor, y: torch.Tensor, old_mask: torch.Tensor) -> Tuple[float, float]:
    """How the classifier after the previous task judges replayed images of old classes: the share
    whose argmax over the old classes is the conditioning label, and the mean entropy (nats) of its
    softmax over the old classes."""
    logits = prev_clf(x).float().masked_fill(~old_mask, float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp.masked_fill(~old_mask, 0.0)).sum(-1)
    return float((logits.argmax(-1) == y).float().mean()), float(entropy.mean())


# ------------------------------------------------------------------ the solver loop


def check_solver(s, cfg) -> None:
    """The ``solver`` section's checks across its keys and the model. Only the classifier's runs read
    the section (its defaults need a class-conditional model), so they run here, not at every config
    load: first in ``run_solver``, before any work, and in ``Solver`` for one built by hand."""
    if s.replay not in REPLAYS:
        raise ConfigError(f"solver.replay {s.replay!r} is not one of {', '.join(REPLAYS)}")
    if s.replay in FROM_GENERATOR and not cfg.model.class_cond:
        raise ConfigError(f"solver.replay {s.replay} needs a class-conditional diffusion model (model.class_cond)")
    if s.use_old_grad and s.use_new_grad:
        raise ConfigError("solver.use_old_grad and solver.use_new_grad cannot both be true (as in GUIDE)")
    if s.negate_old_grad and not s.use_old_grad:
        raise ConfigError("solver.negate_old_grad flips the old classifier's gradient: it needs solver.use_old_grad")
    if s.replay == "soft" and s.trim_logits:
        raise ConfigError("solver.replay=soft is Masip's soft targets over all logits of the previous classifier, "
                          "which trimming leaves untrained for the classes it has not seen: leave "
                          "solver.trim_logits unset (or false) for soft, or use soft_kd (targets over the old "
                          "classes only)")
    if s.noised_classifier and s.replay != "guided":
        raise ConfigError(f"solver.noised_classifier is a guidance option: it needs solver.replay=guided, not "
                          f"{s.replay!r}")
    solver = sampler_of(s.respacing)
    if s.replay == "guided" and (s.use_old_grad or s.use_new_grad) and not s.noised_classifier and solver:
        raise ConfigError(f"solver.respacing {s.respacing!r} names the {solver} solver, which cannot guide through "
                          "x̂0 (GUIDE's guidance without a noised classifier): use a 'ddimN' respacing, or "
                          "solver.noised_classifier: true (guidance on x_t works with every sampler)")


class Solver:
    def __init__(self, cfg, x, y, xt, yt, info, scenario: Scenario, device, run_dir: str, logger):
        s = cfg.solver
        check_solver(s, cfg)
        self.trim_logits = trims_logits(s)
        self.cfg, self.s = cfg, s
        self.x, self.y, self.xt, self.yt = x, y, xt, yt
        self.info, self.scenario, self.device = info, scenario, device
        self.run_dir, self.logger = run_dir, logger
        self.diffusion_run = s.diffusion_run or experiment.run_dir_of(cfg)
        torch.manual_seed(cfg.seed + 2)
        self.clf = create_classifier_net(s.arch, info.num_classes, info.channels).to(device)
        # GUIDE's train_noised_classifier: a second, time-conditioned classifier, trained on noised
        # batches, guides on x_t. Deliberate difference: GUIDE trains its one classifier on noised
        # batches; we keep the solver clean (its test accuracy is the result) and add this one.
        self.nclf = create_classifier_net(s.arch, info.num_classes, info.channels, time_conditioned=True).to(device) \
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
        _, emas = final_weights(tdir)
        model = experiment.build_model(self.cfg, self.info)
        model.load_state_dict(emas[parse_ema_rates(self.cfg.train.ema_rate)[0]])
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def generate(self, model, diffusion, task: Task, n: int, gen: torch.Generator, prev_clf, prev_nclf=None) -> tuple:
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
                    cond_fn = guide_cond_fn(self.nclf, prev_nclf, seen_mask, task.classes, old_mask, scales, s,
                                            noised=True)
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

    def train_task(self, task: Task, prev_clf, prev_nclf=None) -> dict:
        s = self.s
        i = task.index
        gen_mode = s.replay in FROM_GENERATOR and i > 0
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
        old_mask = torch.zeros_like(seen_mask)
        old_mask[list(task.old_classes)] = True
        judged: List[Tuple[float, float]] = []
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
                x_gen, y_gen = self.generate(model, diffusion, task, n_gen, gen, prev_clf, prev_nclf)
                judged.append(replay_judgement(prev_clf, x_gen, y_gen, old_mask))
                if s.replay in SOFT_TARGETS:
                    with torch.no_grad():
                        soft_gen = prev_clf(x_gen).float()
            xb = torch.cat([xr, x_gen]) if gen_mode else xr
            labels = torch.cat([yr, y_gen]) if gen_mode else yr
            if kinds:
                xb = augment(xb.cpu(), kinds, gen).to(self.device)
            logits = self.clf(xb).float()
            if self.trim_logits:
                logits = logits.masked_fill(~seen_mask, float("-inf"))
            if s.replay in SOFT_TARGETS and gen_mode:
                real = F.cross_entropy(logits[:n_real], yr)
                soft = masip_soft_loss(logits[n_real:], soft_gen, s.temperature) if s.replay == "soft" else \
                    soft_target_kd(logits[n_real:], soft_gen, list(task.old_classes), s.temperature)
                loss = real / (i + 1) + soft * i / (i + 1)
            else:
                loss = F.cross_entropy(logits, labels)
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
            row["replay_label_agree"] = round(float(np.mean([a for a, _ in judged])), 4)
            row["replay_old_entropy"] = round(float(np.mean([e for _, e in judged])), 4)
        return row

    def run(self) -> Dict[int, Dict[int, float]]:
        prev_clf = prev_nclf = None
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
                prev_nclf = copy.deepcopy(self.nclf).eval() if self.nclf is not None else None
            self.gen_sec, self.gen_images = 0.0, 0
            row = self.train_task(task, prev_clf, prev_nclf)
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
    check_solver(cfg.solver, cfg)
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
