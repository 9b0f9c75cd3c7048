"""The training loop: AdamW, EMA, microbatches, DDP, autocast, checkpoints with automatic resume.

One ``TrainLoop`` trains one model for ``cfg.total_steps`` optimizer steps. What a step minimises
is the ``objective`` (default: the diffusion loss of ``DiffusionObjective``); continual methods
wrap the objective and add ``hooks`` instead of forking the loop.

Determinism and resume. At the start of every step all random generators are seeded from
(seed, step, rank), and the data loader's global batch is a function of (seed, step). A checkpoint
therefore needs no RNG state: a run resumed from step N computes exactly what the uninterrupted run
computed (bit-identical on CPU with a fixed thread count). Every rank loads the checkpoint before
the model is wrapped in DDP, so multi-process resume cannot hang.

Preemption (``runtime.preemption``). SIGTERM, SIGUSR1 (SLURM) and SIGINT (Ctrl-C) ask for a checkpoint at
the next step boundary; the loop then raises ``Preempted``, which scripts turn into exit code 0 and a message on how
to resume. A second Ctrl-C stops at once (``KeyboardInterrupt``: exit 130, the last checkpoint kept).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel as DDP

from .diffusion.resample import LossAwareSampler
from .runtime import dist_util
from .runtime import checkpoint as ckpt
from .runtime import faults
from .runtime.config import ConfigError, register_section_schema
from .runtime.preemption import Preempted, PreemptionFlag
from .runtime.precision import MEMORY_FORMATS, PRECISIONS, Precision
from .runtime.precision import resolve as resolve_precision
from .runtime.seeding import seed_everything_for_step

LOSS_WEIGHTINGS = ("none", "min_snr")


@dataclass
class TrainConfig:
    """The ``train`` section of a config (registered below): what ``TrainLoop`` reads."""

    total_steps: int = 1000
    batch_size: int = 64  # GLOBAL batch; the per-rank batch is batch_size / world_size
    microbatch: int = -1  # per-rank microbatch (-1: no microbatching)
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_schedule: str = "constant"  # constant | linear | cosine (decay to 0 at total_steps)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_rate: str = "0.9999"  # comma-separated list
    ema_warmup: bool = True  # effective rate min(rate, (1 + n) / (10 + n)) at step n (false: ADM's constant rate)
    schedule_sampler: str = "uniform"  # uniform | loss-second-moment
    loss_weighting: str = "none"  # none (ADM) | min_snr: loss x min(SNR, gamma)/SNR (Hang et al. 2023)
    min_snr_gamma: float = 5.0
    uncond_p: float = 0.0  # classifier-free guidance: label dropout to a null class (class_cond models)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler). auto: bf16 where the device runs it natively (CUDA, a CPU with AVX512-BF16 or AMX), else fp32 (runtime/precision.py)
    memory_format: str = "auto"  # auto | contiguous | channels_last: the network's layout (auto: channels_last with bf16 on an AMX CPU, where oneDNN needs it)
    compile: str = ""  # torch.compile the training forward: "" (off) | inductor (GPUs) | eager | aot_eager (checks)
    nan_policy: str = "stop"  # stop | skip: what a non-finite loss or gradient does
    log_interval: int = 10
    save_interval: int = 500  # also saved at the end; 0: only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept in the run folder (0: all)
    num_threads: int = 0  # torch threads per process (0: leave torch's default)
    sample_at_end: int = 16  # images in the end-of-run grid (0: none)
    wandb: str = ""  # a wandb project name to log to (WANDB_MODE=offline works); "" = off
    tensorboard: bool = False  # also write scalars to <run>/tb


def parse_ema_rates(text) -> List[float]:
    """``train.ema_rate`` ("0.9999" or "0.999,0.9999", or a number) as a list of floats."""
    if isinstance(text, (float, int)):
        return [float(text)]
    return [float(r) for r in str(text).split(",") if r.strip()]


def check_train(t: TrainConfig, cfg) -> None:
    """The training section's checks across keys (its choices and sizes are the registered rules)."""
    if not t.min_snr_gamma > 0:
        raise ConfigError(f"train.min_snr_gamma must be > 0, got {t.min_snr_gamma}")
    if t.microbatch == 0 or t.microbatch < -1:
        raise ConfigError(f"train.microbatch must be -1 (off) or > 0, got {t.microbatch}")
    try:
        rates = parse_ema_rates(t.ema_rate)
    except ValueError:
        raise ConfigError(f"train.ema_rate must be a comma-separated list of numbers, got {t.ema_rate!r}") from None
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise ConfigError(f"train.ema_rate values must be in [0, 1), got {t.ema_rate!r}")
    if not 0.0 <= t.uncond_p < 1.0:
        raise ConfigError(f"train.uncond_p must be in [0, 1), got {t.uncond_p}")
    if t.uncond_p > 0 and not cfg.model.class_cond:
        raise ConfigError("train.uncond_p > 0 (label dropout for classifier-free guidance) needs model.class_cond true")


register_section_schema("train", None, TrainConfig, check_train,
                        choices={"lr_schedule": ("constant", "linear", "cosine"),
                                 "schedule_sampler": ("uniform", "loss-second-moment"),
                                 "loss_weighting": LOSS_WEIGHTINGS, "precision": PRECISIONS,
                                 "memory_format": MEMORY_FORMATS, "compile": ("", "inductor", "eager", "aot_eager"),
                                 "nan_policy": ("stop", "skip")},
                        positive=("batch_size", "total_steps", "lr"))


class NonFiniteError(RuntimeError):
    """A loss term or gradient became NaN/inf and the nan_policy is 'stop'."""


@dataclass
class StepContext:
    """What an objective may want to know about the current (micro)step."""

    step: int
    microbatch: int
    num_microbatches: int
    generator: torch.Generator
    rank: int
    world_size: int


def _read_scalars(values: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Python floats of 0-d tensors, in order, with one device-to-host read for those on an
    accelerator (CPU ones are read directly: no sync)."""
    on_device = [k for k, v in values.items() if v.device.type != "cpu"]
    read = dict(zip(on_device, torch.stack([values[k].reshape(()) for k in on_device]).tolist())) if on_device else {}
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


class DiffusionObjective:
    """The standard diffusion loss on the real batch: t from the schedule sampler, ADM's losses.

    Draws, in this order, t (schedule sampler), the noise and (with ``uncond_p`` > 0) the label
    dropout mask from ``ctx.generator``; objectives that extend this one draw the same way first,
    so that their data term equals this one.

    ``uncond_p``: classifier-free guidance training, each label replaced by ``null_class`` with
    this probability (``classifier_free.drop_labels``).

    ``loss_weighting``: ``none`` (ADM) or ``min_snr`` -- each sample's loss times the min-SNR-gamma
    weight of its timestep (Hang et al. 2023; ``diffusion_math.min_snr_weight``), folded into the
    weights ``sample_t`` returns so that every objective built on this one weights its data term alike.

    ``terms``: the loss terms a step logs (the continual loop reports their last values).
    """

    terms = ("loss", "mse", "vb")

    def __init__(self, diffusion, schedule_sampler, class_cond: bool, uncond_p: float = 0.0,
                 null_class: Optional[int] = None, loss_weighting: str = "none", min_snr_gamma: float = 5.0):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler
        self.class_cond = class_cond
        self.uncond_p = float(uncond_p) if class_cond else 0.0
        self.null_class = null_class
        if self.uncond_p > 0 and null_class is None:
            raise ValueError("label dropout (uncond_p > 0) needs the model's null class")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss weighting {loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self._alpha_bar = torch.tensor(np.asarray(diffusion.alphas_cumprod), dtype=torch.float64)

    @classmethod
    def from_config(cls, cfg, diffusion, num_classes: int) -> "DiffusionObjective":
        """The objective a config trains with (``train.schedule_sampler``, ``train.uncond_p``,
        ``train.loss_weighting``): one place for every script and the continual loop."""
        from .diffusion.resample import create_named_schedule_sampler
        from .sampling.classifier_free import null_class_of

        return cls(diffusion, create_named_schedule_sampler(cfg.train.schedule_sampler, diffusion),
                   class_cond=cfg.model.class_cond, uncond_p=cfg.train.uncond_p,
                   null_class=null_class_of(cfg, num_classes), loss_weighting=cfg.train.loss_weighting,
                   min_snr_gamma=cfg.train.min_snr_gamma)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """The per-sample weight of the loss at timesteps ``t`` (ones without a weighting)."""
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        from .diffusion.diffusion_math import min_snr_weight

        ab = self._alpha_bar[t.cpu()]
        mean_type = getattr(getattr(self.diffusion, "model_mean_type", None), "name", "EPSILON")
        if mean_type not in ("EPSILON", "START_X"):
            raise ValueError(f"min-SNR weighting needs an eps or x0 model, not {mean_type}")
        w = min_snr_weight(ab, self.min_snr_gamma, "x0" if mean_type == "START_X" else "eps")
        return w.to(torch.float32).to(t.device)

    def model_kwargs(self, y):
        return {"y": y} if self.class_cond else {}

    def drop_labels(self, y, ctx: StepContext):
        """``y`` after label dropout (a draw from ``ctx.generator`` only when ``uncond_p`` > 0)."""
        if self.uncond_p <= 0 or y is None:
            return y
        from .sampling.classifier_free import drop_labels

        return drop_labels(y, self.uncond_p, self.null_class, ctx.generator)

    def sample_t(self, n: int, device, ctx: StepContext):
        """(t, weights): the schedule sampler's draw; weights = importance weights x loss weighting."""
        t, weights = self.schedule_sampler.sample(n, device, generator=ctx.generator)
        if self.loss_weighting != "none":
            weights = weights * self.loss_weight(t)
        return t, weights

    def update_sampler(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Give a loss-aware schedule sampler the data term's per-sample losses at the t it drew (ADM).

        ``losses``: ``training_losses(...)["loss"]`` of the real batch, before the importance and
        loss weights. Every objective built on this one calls it with its data term (collective on
        more than one rank: every rank calls it at every microbatch). No-op for other samplers.
        """
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses.detach())

    def __call__(self, model, x, y, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        t, weights = self.sample_t(x.shape[0], x.device, ctx)
        noise = torch.randn(x.shape, generator=ctx.generator).to(x.device)
        y = self.drop_labels(y, ctx)
        losses = self.diffusion.training_losses(model, x, t, model_kwargs=self.model_kwargs(y), noise=noise)
        self.update_sampler(t, losses["loss"])
        loss = (losses["loss"] * weights).mean()
        return loss, {k: v.detach().mean() for k, v in losses.items()}

    def state_dict(self):
        sd = getattr(self.schedule_sampler, "state_dict", None)
        return {"sampler": sd()} if sd else {}

    def load_state_dict(self, state):
        if "sampler" in state:
            self.schedule_sampler.load_state_dict(state["sampler"])


class TrainHook:
    """Optional callbacks; every method is a no-op by default."""

    def before_step(self, loop: "TrainLoop", step: int) -> None:
        pass

    def after_backward(self, loop: "TrainLoop", step: int) -> None:
        """The step's gradients are in ``loop.params``' ``.grad`` (summed over microbatches and ranks,
        unscaled, not yet clipped): read them (SI) or change them (A-GEM) before the optimizer step."""

    def after_step(self, loop: "TrainLoop", step: int, terms: Dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def lr_at(step: int, cfg) -> float:
    """Linear warmup over ``warmup_steps``, then constant, linear or cosine decay to 0 at total_steps."""
    lr = cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return lr
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    frac = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    if cfg.lr_schedule == "linear":
        return lr * (1.0 - frac)
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def _no_buffer_sync() -> dict:
    """DDP keyword that turns off the per-forward buffer broadcast (renamed in recent torch)."""
    params = inspect.signature(DDP.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class TrainLoop:
    """Train ``model`` for ``cfg.total_steps`` steps, resuming automatically from ``run_dir``.

    Args:
        model: the network (not yet wrapped in DDP); its weights are the starting point unless a
            checkpoint exists in ``run_dir``.
        data: an iterator of per-rank ``(x, y)`` batches with ``state_dict``/``load_state_dict``.
        cfg: a ``TrainConfig``.
        objective: ``objective(model, x, y, ctx) -> (loss, terms)``; may have state_dict.
        hooks: ``TrainHook`` objects (before/after step, extra resumable state).
        init_ema: optional {rate: state_dict} to start the EMA from (e.g. the previous task's); a
            parameter it lacks starts from its weights.
        export_config: JSON-able model description saved beside the EMA safetensors exports.
        tag: a label (e.g. "task 2") used in messages.
        precision: the forward's autocast and the network's layout (default: ``cfg.precision`` and
            ``cfg.memory_format`` resolved for the device, ``runtime.precision.resolve``).
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        data,
        cfg,
        run_dir: str,
        objective: Callable,
        seed: int = 0,
        logger=None,
        device=None,
        hooks: Sequence[TrainHook] = (),
        init_ema: Optional[Dict[float, Dict[str, torch.Tensor]]] = None,
        export_config: Optional[dict] = None,
        tag: str = "",
        precision: Optional[Precision] = None,
    ):
        self.model = model
        self.data = data
        self.cfg = cfg
        self.run_dir = run_dir
        self.objective = objective
        self.seed = seed
        self.logger = logger
        self.device = device or dist_util.dev()
        self.hooks = list(hooks)
        self.export_config = export_config or {}
        self.tag = tag
        self.rank = dist_util.get_rank()
        self.world_size = dist_util.get_world_size()
        if cfg.batch_size % self.world_size:
            raise ValueError(
                f"train.batch_size {cfg.batch_size} is not divisible by the world size {self.world_size}"
            )
        self.batch_per_rank = cfg.batch_size // self.world_size
        self.microbatch = cfg.microbatch if cfg.microbatch > 0 else self.batch_per_rank
        if self.batch_per_rank % self.microbatch:
            raise ValueError(
                f"train.microbatch {cfg.microbatch} does not divide the per-rank batch {self.batch_per_rank} "
                f"(batch_size {cfg.batch_size} / world size {self.world_size})"
            )
        self.precision = precision or resolve_precision(cfg.precision, getattr(cfg, "memory_format", "auto"),
                                                        self.device)
        self.precision.to_layout(self.model.to(self.device))  # channels_last: the weights, hence the EMA too
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.use_cuda = torch.device(self.device).type == "cuda"
        self.opt = torch.optim.AdamW(  # fused on CUDA: one kernel for the whole update; foreach on the CPU
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2),
            fused=self.use_cuda, foreach=not self.use_cuda,
        )
        self.ema_rates = parse_ema_rates(cfg.ema_rate)
        # The EMA holds every parameter, so that it is a whole network; only the trained ones move (a
        # frozen one keeps its average: a continual method may train a part of the network per task).
        named = list(self.model.named_parameters())
        self.param_names = [n for n, _ in named]
        self.ema = [[(init_ema[r][n] if init_ema and n in init_ema[r] else p).detach().clone().to(self.device)
                     for n, p in named] for r in self.ema_rates]
        trained = [i for i, (_, p) in enumerate(named) if p.requires_grad]
        self._ema_trained = [[ema[i] for i in trained] for ema in self.ema]  # the same tensors
        self.scaler = torch.amp.GradScaler("cuda", enabled=(self.precision.name == "fp16" and self.use_cuda))
        self.step = 0
        self._resume()
        # Wrap only after every rank has loaded its weights.
        if self.world_size > 1 and tdist.is_initialized():
            self.ddp_model = DDP(
                self.model,
                device_ids=[self.device.index] if self.use_cuda else None,
                find_unused_parameters=False,
                **_no_buffer_sync(),
            )
        else:
            self.ddp_model = self.model
        self.is_ddp = self.ddp_model is not self.model
        if getattr(cfg, "compile", ""):
            # Only the training forward is compiled: weights, EMA and checkpoints stay self.model's
            # (no "_orig_mod." keys), and sampling runs the plain module.
            self.ddp_model = torch.compile(self.ddp_model, backend=cfg.compile)

    # ------------------------------------------------------------------ state

    def _stateful(self) -> Dict[str, Any]:
        items = {"objective": self.objective, "data": self.data}
        for i, h in enumerate(self.hooks):
            items[f"hook{i}"] = h
        return {k: v for k, v in items.items() if hasattr(v, "state_dict")}

    def ema_state_dicts(self) -> Dict[float, Dict[str, torch.Tensor]]:
        return {r: dict(zip(self.param_names, ps)) for r, ps in zip(self.ema_rates, self.ema)}

    def _resume(self) -> None:
        step = ckpt.latest_checkpoint(self.run_dir, log=self._log)
        if step is None:
            return
        files = ckpt.load_checkpoint_files(self.run_dir, step, map_location="cpu")
        ckpt.load_checked(self.model, files[f"model{step:06d}.pt"], f"{self.run_dir}/model{step:06d}.pt")
        for rate, ema in zip(self.ema_rates, self.ema):
            name = f"ema_{rate}_{step:06d}.pt"
            if name not in files:
                raise ckpt.CheckpointError(f"checkpoint at step {step} in {self.run_dir} has no {name}")
            sd = files[name]
            for n, p in zip(self.param_names, ema):
                p.copy_(sd[n])
        opt = files[f"opt{step:06d}.pt"]
        self.opt.load_state_dict(opt["opt"])
        if opt.get("scaler"):
            self.scaler.load_state_dict(opt["scaler"])
        state = files[f"state{step:06d}.pt"]
        for key, obj in self._stateful().items():
            if key in state["components"]:
                obj.load_state_dict(state["components"][key])
        self._load_log_means(state.get("log_means"))
        self.step = int(state["step"])
        self._log(f"{self.tag + ': ' if self.tag else ''}resumed from step {self.step} in {self.run_dir}")

    def _load_log_means(self, per_rank: Optional[List[dict]]) -> None:
        """Restore the logger's means of the steps since its last dump (one entry per rank)."""
        if not per_rank or not hasattr(self.logger, "load_state_dict"):
            return
        if len(per_rank) == self.world_size:
            self.logger.load_state_dict(per_rank[self.rank] or {})
        elif self.rank == 0:  # another world size: rank 0 holds the sums of all (dumps reduce over ranks)
            merged: Dict[str, Dict[str, float]] = {"sums": {}, "counts": {}}
            for part in filter(None, per_rank):
                for kind in merged:
                    for k, v in part.get(kind, {}).items():
                        merged[kind][k] = merged[kind].get(k, 0) + v
            self.logger.load_state_dict(merged)

    def save(self) -> None:
        """Write the checkpoint for the current step (rank 0 writes; everyone waits)."""
        step = self.step
        # Collective: every rank calls save(). The means logged since the last dump are part of the state.
        log_means = dist_util.all_gather_object(self.logger.state_dict() if hasattr(self.logger, "state_dict")
                                                else None)
        if dist_util.is_main():
            files = {
                f"model{step:06d}.pt": self.model.state_dict(),
                f"opt{step:06d}.pt": {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()},
                f"state{step:06d}.pt": {
                    "step": step,
                    "world_size": self.world_size,
                    "components": {k: v.state_dict() for k, v in self._stateful().items()},
                    "log_means": log_means,
                },
            }
            for rate, sd in self.ema_state_dicts().items():
                files[f"ema_{rate}_{step:06d}.pt"] = sd
            ckpt.write_checkpoint(self.run_dir, step, files, extra={"tag": self.tag})
            for rate, sd in self.ema_state_dicts().items():
                ckpt.save_safetensors(
                    sd,
                    f"{self.run_dir}/ema_{rate}_{step:06d}.safetensors",
                    {"step": step, "ema_rate": rate, **self.export_config},
                )
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
            self._prune_exports()
        dist_util.barrier()

    def _prune_exports(self) -> None:
        import glob
        import os

        if self.cfg.keep_checkpoints <= 0 or "://" in self.run_dir:
            return
        keep = set(ckpt.list_manifests(self.run_dir))
        for path in glob.glob(os.path.join(self.run_dir, "ema_*_*.safetensors")):
            step = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
            if step not in keep:
                for p in (path, os.path.splitext(path)[0] + ".json"):
                    if os.path.exists(p):
                        os.remove(p)

    # ------------------------------------------------------------------ running

    def _log(self, msg: str) -> None:
        if self.logger is not None:
            self.logger.log(msg)
        elif dist_util.is_main():
            print(msg, flush=True)

    def run_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        """One optimizer step on this rank's batch (x, y); returns the averaged loss terms."""
        step = self.step
        gen = seed_everything_for_step(self.seed, step, self.rank)
        lr = lr_at(step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        for h in self.hooks:
            h.before_step(self, step)
        self.opt.zero_grad(set_to_none=True)
        n_micro = x.shape[0] // self.microbatch
        # The loss terms stay on the device until the one read below (a host sync per term and
        # microbatch would stall an accelerator's queue; one read per step is what the non-finite
        # policy needs).
        sums: Dict[str, torch.Tensor] = {}
        for i in range(n_micro):
            sl = slice(i * self.microbatch, (i + 1) * self.microbatch)
            ctx = StepContext(step, i, n_micro, gen, self.rank, self.world_size)
            last = i == n_micro - 1
            sync = contextlib.nullcontext() if (last or not self.is_ddp) else self.ddp_model.no_sync()
            with sync:
                with self.precision.autocast(self.device):
                    loss, terms = self.objective(self.ddp_model, x[sl], y[sl], ctx)
                self.scaler.scale(loss / n_micro).backward()
            for k, v in list(terms.items()) + [("__loss", loss)]:
                v = torch.as_tensor(v).detach().double() / (n_micro if k != "__loss" else 1)  # on its own device
                sums[k] = sums[k] + v if k in sums else v
        self.scaler.unscale_(self.opt)
        for h in self.hooks:
            h.after_backward(self, step)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        )
        sums["__grad_norm"] = grad_norm.detach().double()
        terms_sum = _read_scalars(sums)
        grad_norm_value, loss_value = terms_sum.pop("__grad_norm"), terms_sum.pop("__loss")
        # the non-finite loss terms, in the objective's order (a sum of the microbatches' values is
        # non-finite exactly when one of them is)
        bad: List[str] = [k for k, v in terms_sum.items() if not math.isfinite(v)]
        if not bad and not math.isfinite(loss_value):
            bad.append("loss")
        fp16_overflow = self.scaler.is_enabled() and not math.isfinite(grad_norm_value)
        if not bad and not math.isfinite(grad_norm_value) and not fp16_overflow:
            bad.append("gradient")
        if dist_util.any_rank(bool(bad)):
            where = f"{self.tag}, " if self.tag else ""
            msg = (f"non-finite {', '.join(bad) or 'value on another rank'} at {where}step {step} "
                   f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in terms_sum.items())})")
            if self.cfg.nan_policy == "stop":
                raise NonFiniteError(msg + "; stopping (set train.nan_policy=skip to skip such steps). "
                                     "Checkpoints already written are intact.")
            self._log(msg + "; step skipped (train.nan_policy=skip)")
            self.opt.zero_grad(set_to_none=True)
            terms_sum["skipped"] = 1.0
        else:
            scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.opt)
            self.scaler.update()
            if scale_before is not None and self.scaler.get_scale() < scale_before:
                self._log(f"fp16: step {step} skipped (overflow); loss scale lowered to {self.scaler.get_scale():g}")
                terms_sum["skipped"] = 1.0
            else:
                self._update_ema()
        terms_sum["grad_norm"] = grad_norm_value
        terms_sum["lr"] = lr
        for h in self.hooks:
            h.after_step(self, step, terms_sum)
        self.step += 1
        return terms_sum

    @torch.no_grad()
    def _update_ema(self) -> None:
        n = self.step
        for rate, ema in zip(self.ema_rates, self._ema_trained):
            if getattr(self.cfg, "ema_warmup", False):
                # Short runs: without a warm-up the EMA stays near the initial network for ~1/(1-rate) steps.
                rate = min(rate, (1 + n) / (10 + n))
            torch._foreach_lerp_(ema, [p.detach() for p in self.params], 1.0 - rate)

    def run(self, until: Optional[int] = None) -> None:
        """Train until ``total_steps`` (or until step ``until``, e.g. a learning curve's next point: the
        learning-rate schedule still spans ``total_steps``); save at ``save_interval`` and at the end."""
        cfg = self.cfg
        end = cfg.total_steps if until is None else min(int(until), cfg.total_steps)
        if self.step >= end:
            if until is None:
                self._log(f"{self.tag + ': ' if self.tag else ''}already complete ({self.step} steps)")
            return
        flag = PreemptionFlag()
        bar = None
        if self.logger is not None and hasattr(self.logger, "progress_bar"):
            bar = self.logger.progress_bar(total=cfg.total_steps, initial=self.step, desc=self.tag or "train")
        try:
            t_last, n_last = time.time(), self.step
            while self.step < end:
                x, y = next(self.data)
                x, y = x.to(self.device), y.to(self.device)
                terms = self.run_step(x, y)
                faults.point("train_step")
                if self.logger is not None:
                    for k, v in terms.items():
                        self.logger.logkv_mean(k, v)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms.get('loss', float('nan')):.4f}", refresh=False)
                done = self.step >= end
                if self.logger is not None and (self.step % cfg.log_interval == 0 or done):
                    dt = time.time() - t_last
                    self.logger.logkv("step", self.step)
                    self.logger.logkv("samples", self.step * cfg.batch_size)
                    self.logger.logkv("sec_per_step", dt / max(1, self.step - n_last))
                    self.logger.logkv("img_per_sec", cfg.batch_size * (self.step - n_last) / max(dt, 1e-9))
                    self.logger.dumpkvs(self.step)
                    t_last, n_last = time.time(), self.step
                stop = dist_util.any_rank(flag.received is not None)
                if done or stop or (cfg.save_interval > 0 and self.step % cfg.save_interval == 0):
                    self.save()
                if stop and not done:
                    raise Preempted(
                        f"{flag.received or 'a preemption signal'} received: checkpoint written at step "
                        f"{self.step} in {self.run_dir}; rerun the same command to resume"
                    )
        finally:
            flag.close()
            if bar is not None:
                bar.close()
