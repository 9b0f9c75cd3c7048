"""Continual methods as pluggable parts of one loop, registered by name.

A method is a class with a ``Config`` dataclass (its YAML ``method:`` section, validated strictly)
and hooks that the loop (``continual.loop``) calls for every task, in this order:

    adapt_model(task, model)     at the task boundary: the model to train (changed in place, or a new
                                 one); also before a finished task's weights are restored
    import_weights(model, state) another run's task 0 weights (continual.init_from) as the adapted model's
    trainable(task, model)       the names of the parameters this task trains (None: all); the optimizer,
                                 the EMA (a new parameter's starts from it), the teacher, checkpoints
                                 and resume follow the model and this set
    before_task(task, teacher)   teacher = frozen copy of the model after the previous task (or None)
    task_data(task, x, y)        the images the task trains on (default: the task's real data)
    objective(task, base)        what each step minimises (default: ``base``, the diffusion loss; one
                                 object for the whole run, so its schedule sampler spans the tasks)
    hooks(task)                  TrainHooks for the training loop (before/after step, after backward)
    after_task(task)             e.g. the EWC Fisher, the replay buffer update
    task_columns(task)           the method's own columns of the task's metrics.csv row; its cost in
                                 memory there: ``extra_params`` (parameters beyond the network's) and
                                 ``extra_state_M`` (``state_floats_M``: what it keeps after the task)
    state_dict()/load_state_dict()   what must survive to the next tasks and across a restart

A method also declares the loss terms its objective logs (``terms``: their last values reach
``metrics.csv`` as ``final_<term>``), and how it composes with others (``method: [ewc, buffer_replay]``,
``continual.compose``): ``owns_forward`` (its objective makes the step's forward pass itself from the
diffusion objective's parts, so it must be given that objective: one such method in a list),
``adapts_model`` (it changes the model or the trainable set: one in a list) and ``reads_parameters``
(it keeps state per parameter of the model it was built with, so it cannot follow an adapted model).

The loop knows no method by name: ``method.name`` in the config picks the class from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type

import torch

from ..runtime import dist_util
from ..runtime.config import ConfigError, register_section_schema
from .scenario import Scenario, Task, select

METHODS: Dict[str, Type["ContinualMethod"]] = {}


def registrar(table: Dict[str, type], what: str, on_register: Optional[Callable[[str, type], None]] = None):
    """A ``register(name)`` class decorator over ``table``: the class gets ``cls.name = name``; a name
    registered twice is refused (``what`` names the kind in the error); ``on_register(name, cls)`` runs
    after. The one registration rule of the generator's methods and the classifier's replay modes."""

    def register(name: str):
        def wrap(cls):
            if name in table:
                raise ValueError(f"{what} {name!r} registered twice")
            cls.name = name
            table[name] = cls
            if on_register is not None:
                on_register(name, cls)
            return cls

        return wrap

    return register


def check_method(cls, mcfg, cfg, world_size: int) -> None:
    """A method's checks: that it trains the config's generator (``generator``), then its own ``check``."""
    if cfg.generator not in cls.generators:
        raise ConfigError(f"method {cls.name} trains a {' or '.join(cls.generators)} generator, not generator: "
                          f"{cfg.generator} (methods for it: "
                          f"{', '.join(n for n, c in METHODS.items() if cfg.generator in c.generators)})")
    cls.check(mcfg, cfg, world_size)


def _register_schema(name: str, cls) -> None:
    register_section_schema("method", name, cls.Config,
                            check=lambda mcfg, cfg: check_method(cls, mcfg, cfg, launch_world_size()))


_register_method = registrar(METHODS, "continual method", _register_schema)
ANY_GENERATOR = ("diffusion", "vae")
# Task columns of a method's cost that add up when methods compose (``continual.compose``).
ADDITIVE_COLUMNS = ("extra_params", "extra_state_M")


def state_floats_M(tensors: Iterable[Optional[torch.Tensor]] = (), images: int = 0, image: Optional[torch.Tensor] = None
                   ) -> float:
    """The ``extra_state_M`` column: millions of numbers a method keeps beside the network it trains
    (per-parameter tensors: anchors, importances, a teacher's weights; stored images: ``images`` of the
    size of ``image``, a buffer's or a memory's, counted as images even where only their indices are held,
    as CLoG counts its memory). Labels and scalars are not counted."""
    n = sum(t.numel() for t in tensors if t is not None)
    if images:
        n += int(images) * int(image[0].numel())
    return round(n / 1e6, 6)


def register_method(name: str, generators: Tuple[str, ...] = ("diffusion",)):
    """Class decorator: make a method available as ``method.name: <name>`` in YAML (its Config validates the
    section); ``generators``: those it can train (``generator``; checked at load)."""

    def wrap(cls):
        cls.generators = tuple(generators)
        return _register_method(name)(cls)

    return wrap


def launch_world_size() -> int:
    """The number of processes of this run, known before the process group is up (from the launcher)."""
    return dist_util.get_world_size() if dist_util.is_initialized() else max(1, dist_util.detect().world_size)


@dataclass
class ContinualContext:
    """What methods may use: the config, data, model, diffusion and where to write."""

    cfg: Any
    scenario: Scenario
    x: torch.Tensor  # all training images (model tensors, [-1, 1])
    y: torch.Tensor
    info: Any  # DataInfo
    model: torch.nn.Module  # the network being trained (raw weights)
    diffusion: Any  # the training diffusion (every step of the chain)
    device: torch.device
    run_dir: str
    logger: Any
    rank: int = 0
    world_size: int = 1

    def task_indices(self, classes) -> torch.Tensor:
        return torch.as_tensor(select(self.y.numpy(), classes), dtype=torch.long)

    def real_data(self, classes) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = self.task_indices(classes)
        return self.x[idx], self.y[idx]

    def task_dir(self, task: Task) -> str:
        return f"{self.run_dir}/task_{task.index}"


class ContinualMethod:
    """Base class: naive fine-tuning (every hook is the identity)."""

    name = "base"
    needs_teacher = False
    generators = ("diffusion",)  # the generators (``generator``) the method can train
    terms: Tuple[str, ...] = ()  # the loss terms its objective adds to the step's (final_<term> in metrics.csv)
    adapts_model = False  # overrides adapt_model or trainable
    reads_parameters = False  # keeps per-parameter state of the model it was built with (anchors, importances)

    @classmethod
    def owns_forward(cls, mcfg) -> bool:
        """Whether ``objective`` makes the step's forward pass itself from the diffusion objective's parts
        (``sample_t``, ``drop_labels``, ...) rather than calling it: then it must wrap that objective."""
        return False

    @dataclass
    class Config:
        name: str = "naive"

    @classmethod
    def check(cls, mcfg, cfg, world_size: int) -> None:
        """The method's checks across its keys and the config, run when the config is loaded (before
        any data or model is built); raise ConfigError. ``world_size``: the run's processes."""

    def __init__(self, mcfg, ctx: ContinualContext):
        self.mcfg = mcfg
        self.ctx = ctx
        self.teacher: Optional[torch.nn.Module] = None

    def adapt_model(self, task: Task, model: torch.nn.Module) -> torch.nn.Module:
        """The model task ``task`` trains: ``model`` itself (maybe changed in place) or a new one. Called
        at every task boundary before the teacher copy, and before a finished task is restored into it
        (so it must give the same structure for the same task, whatever ran before)."""
        return model

    def trainable(self, task: Task, model: torch.nn.Module) -> Optional[List[str]]:
        """The names of ``model``'s parameters that ``task`` trains; None: every parameter."""
        return None

    def import_weights(self, model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``state``, weights of the network as built (before ``adapt_model``: another run's task 0, taken by
        ``continual.init_from``), as weights of ``model`` after ``adapt_model`` (its names; what the
        adaptation added at its initial values). A method that adapts the model and whose task 0 trains the
        network as built overrides it, so that it shares the other methods' task 0."""
        return state

    def before_task(self, task: Task, teacher: Optional[torch.nn.Module]) -> None:
        self.teacher = teacher

    def task_data(self, task: Task, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def objective(self, task: Task, base):
        return base

    def hooks(self, task: Task) -> List:
        return []

    def after_task(self, task: Task) -> None:
        pass

    def task_columns(self, task: Task) -> Dict[str, Any]:
        """Columns the method adds to the task's row of ``metrics.csv`` (e.g. a cost paid once per task; the
        memory it keeps after the task, ``extra_state_M``; its parameters beyond the network's,
        ``extra_params``)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ObjectiveWrapper:
    """An objective built on ``base`` (the diffusion loss); its resumable state is the base's."""

    def __init__(self, base):
        self.base = base
        self.diffusion = base.diffusion

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state):
        self.base.load_state_dict(state)


class PenaltyObjective(ObjectiveWrapper):
    """``base``'s loss plus ``scale`` x ``penalty()``, the penalty logged (unscaled) as the term ``term``."""

    def __init__(self, base, penalty: Callable[[], torch.Tensor], term: str, scale: float = 1.0):
        super().__init__(base)
        self.penalty, self.term, self.scale = penalty, term, scale

    def __call__(self, model, x, y, ctx):
        loss, terms = self.base(model, x, y, ctx)
        penalty = self.penalty()
        terms = dict(terms)
        terms[self.term] = penalty.detach()
        terms.setdefault("data_loss", loss.detach())  # composed: the data term of the objective inside
        loss = loss + self.scale * penalty
        terms["loss"] = loss.detach()
        return loss, terms


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
