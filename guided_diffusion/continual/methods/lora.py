"""Per-task LoRA adapters (CLoG's ``lora``; ``guided_diffusion.models.lora``).

At the first task boundary every target layer of the UNet gets one adapter per task of the scenario
(rank 8, alpha 8, dropout 0.1 on attention and the ResBlocks' conv1/conv2: CLoG's configuration); the
adapters are zero-initialised, so they change nothing until trained. Task 0 trains the network's own
weights (the adapters stay zero); task k > 0 trains only its adapters and, with
``train_label_embedding``, the label embedding (CLoG trains the class embedding too). A sample goes
through its label's task's adapter, in training and at sampling: **for class-conditional generation the
label names the task** (CLoG's C-LoRA reads the task from the label too, linhaowei1/CLoG#4), so this is
a method with task identity at test time, to be reported as such. ``extra_params``: the adapters of all
tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...models.lora import (TARGET_KINDS, adapter_parameter_count, adapter_parameters, add_lora, base_parameters,
                     is_adapter_name, target_names)
from ...runtime.config import ConfigError
from ..base import ContinualMethod, register_method
from ..scenario import build_scenario


def check_task_routing(name: str, cfg) -> None:
    """A method that routes each sample to its task by label needs labels of the tasks' classes."""
    if not cfg.model.class_cond:
        raise ConfigError(f"method {name} routes each sample to its task by its label: it needs model.class_cond: true")
    if cfg.train.uncond_p > 0:
        raise ConfigError(f"method {name} routes each sample by its label, and the null class of train.uncond_p "
                          "belongs to no task: set train.uncond_p=0")


@register_method("lora")
class LoRA(ContinualMethod):
    adapts_model = True

    @dataclass
    class Config:
        name: str = "lora"
        rank: int = 8  # CLoG's r
        alpha: float = 8.0  # CLoG's lora_alpha (the adapter's output scaled by alpha / rank)
        dropout: float = 0.1  # CLoG's lora_dropout
        targets: str = "qkv,proj_out,conv1,conv2"  # CLoG's to_q/k/v, to_out.0, conv1, conv2
        train_label_embedding: bool = True  # tasks > 0 train the label embedding too (CLoG's)

    @classmethod
    def check(cls, mcfg, cfg, world_size):
        check_task_routing("lora", cfg)
        if cfg.model.arch != "unet":
            raise ConfigError(f"method lora adapts ADM's UNet, not model.arch: {cfg.model.arch}")
        if mcfg.rank < 1:
            raise ConfigError(f"method.rank must be >= 1, got {mcfg.rank}")
        if not 0 <= mcfg.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {mcfg.dropout}")
        bad = [k for k in mcfg.targets.split(",") if k.strip() not in TARGET_KINDS]
        if bad:
            raise ConfigError(f"method.targets {bad} are not among {', '.join(TARGET_KINDS)}")

    def adapt_model(self, task, model):
        if hasattr(model, "lora_router"):
            return model
        ctx, m = self.ctx, self.mcfg
        # Every task of the scenario, not only those of continual.limit_tasks: a longer rerun fits.
        tasks = build_scenario(dataclasses.replace(ctx.cfg.continual, limit_tasks=-1), ctx.info.num_classes,
                               ctx.info.task_classes).tasks
        kinds = [k.strip() for k in m.targets.split(",") if k.strip()]
        add_lora(model, len(tasks), target_names(model, kinds), rank=m.rank, alpha=m.alpha, dropout=m.dropout,
                 class_groups=[t.classes for t in tasks], num_classes=ctx.info.num_classes, seed=ctx.cfg.seed)
        self.extra_params = adapter_parameter_count(model) * len(tasks)
        ctx.logger.log(f"lora: {len(tasks)} x {adapter_parameter_count(model)} adapter parameters on "
                       f"{len(target_names(model, kinds))} layers")
        return model

    def import_weights(self, model, state):
        """A plain network's weights (another run's task 0) with this model's adapters at their initial values
        (B = 0: they add nothing, as after this method's own task 0, which trains no adapter). A LoRA network's
        own weights (a run of this method) pass unchanged."""
        out = dict(state)
        for k, v in model.state_dict().items():
            if is_adapter_name(k) and k not in out:
                out[k] = v.detach().cpu().clone()
        return out

    def trainable(self, task, model):
        if task.index == 0:
            return list(base_parameters(model))
        names = list(adapter_parameters(model, [task.index]))
        if self.mcfg.train_label_embedding:
            names += [n for n, _ in model.named_parameters() if n.startswith("label_emb.")]
        return names

    def task_columns(self, task):
        return {"extra_params": self.extra_params, "extra_state_M": 0.0}
